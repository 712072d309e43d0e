// Registers tcam_ray::permutohedral_filter (CPU and, when built with CUDA,
// CUDA kernels) and tcam_ray::seed_pixels and seed_labels (CPU; CUDA tensors take the batched
// torch version) with the PyTorch dispatcher and binds build_info() with
// pybind11. Importing the extension module performs the registration.
#include "permutohedral.h"
#include "seed_sampler.h"

#include <c10/util/Exception.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifndef TCAM_RAY_SOURCE_HASH
#define TCAM_RAY_SOURCE_HASH "unknown"
#endif
#ifndef TCAM_RAY_CUDA_ARCH_LIST
#define TCAM_RAY_CUDA_ARCH_LIST ""
#endif
#ifndef TCAM_RAY_TORCH_VERSION
#define TCAM_RAY_TORCH_VERSION "unknown"
#endif
#ifndef TCAM_RAY_CUDA_VERSION
#define TCAM_RAY_CUDA_VERSION ""
#endif

namespace tcam_ray {
namespace crf {

void check_filter_inputs(const at::Tensor& values, const at::Tensor& features, c10::DeviceType device) {
  TORCH_CHECK(values.dim() == 3, "permutohedral_filter: `values` must have shape (N, K, P), got ", values.sizes());
  TORCH_CHECK(features.dim() == 3, "permutohedral_filter: `features` must have shape (N, D, P), got ",
              features.sizes());
  TORCH_CHECK(features.size(0) == values.size(0) && features.size(2) == values.size(2),
              "permutohedral_filter: `features` must have shape (N, D, P) = (", values.size(0), ", D, ",
              values.size(2), ") to match `values` ", values.sizes(), ", got ", features.sizes());
  TORCH_CHECK(features.size(1) >= 1 && features.size(1) <= kMaxFeatureDim,
              "permutohedral_filter: `features` dimension D (dim 1) must be in [1, ", kMaxFeatureDim, "], got ",
              features.size(1));
  TORCH_CHECK(values.scalar_type() == at::kFloat, "permutohedral_filter: `values` must be float32, got ",
              values.scalar_type());
  TORCH_CHECK(features.scalar_type() == at::kFloat, "permutohedral_filter: `features` must be float32, got ",
              features.scalar_type());
  TORCH_CHECK(values.device() == features.device(), "permutohedral_filter: `values` (", values.device(),
              ") and `features` (", features.device(), ") must be on the same device");
  TORCH_CHECK(values.device().type() == device, "permutohedral_filter: this kernel takes ", device,
              " tensors, got ", values.device());
  TORCH_CHECK(values.size(2) < (int64_t{1} << 31) / (kMaxFeatureDim + 1),
              "permutohedral_filter: too many points per item (P = ", values.size(2), ")");
}

}  // namespace crf
}  // namespace tcam_ray

TORCH_LIBRARY_FRAGMENT(tcam_ray, m) {
  m.def(
      "permutohedral_filter(Tensor values, Tensor features, bool reverse=False) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "seed_pixels(Tensor maps, Tensor roi, float max_p, float min_p, int n_fg, int n_bg, int ksz, bool weighted, "
      "int seed) -> (Tensor, Tensor)");
  m.def(
      "seed_labels(Tensor maps, Tensor roi, float max_p, float min_p, int n_fg, int n_bg, int ksz, bool weighted, "
      "int seed, int ignore_index) -> Tensor");
}

TORCH_LIBRARY_IMPL(tcam_ray, CPU, m) {
  m.impl("permutohedral_filter", &tcam_ray::crf::permutohedral_filter_cpu);
  m.impl("seed_pixels", &tcam_ray::seeds::seed_pixels_cpu);
  m.impl("seed_labels", &tcam_ray::seeds::seed_labels_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(tcam_ray, CUDA, m) {
  m.impl("permutohedral_filter", &tcam_ray::crf::permutohedral_filter_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "tcam-ray compiled ops: registers torch.ops.tcam_ray.permutohedral_filter, seed_pixels, seed_labels";
  module.def("build_info", [] {
    pybind11::dict info;
    info["cpu"] = true;
#ifdef WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_arch_list"] = std::string(TCAM_RAY_CUDA_ARCH_LIST);
    info["cuda_version"] = std::string(TCAM_RAY_CUDA_VERSION);
    info["torch_version"] = std::string(TCAM_RAY_TORCH_VERSION);
    info["source_hash"] = std::string(TCAM_RAY_SOURCE_HASH);
    info["max_feature_dim"] = tcam_ray::crf::kMaxFeatureDim;
    return info;
  });
}
