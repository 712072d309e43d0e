// Seed sampler of the stage-2 pseudo-labels (CPU): see seed_sampler_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace tcam_ray {
namespace seeds {

struct SeedSettings {
  double max_p;  // foreground region: this share of the ROI, by descending value
  double min_p;  // background region: this share of the frame, by ascending value
  int64_t n_fg;  // draws per frame
  int64_t n_bg;
  int64_t ksz;  // odd side of the square around each seed
  bool weighted;  // foreground draws proportional to the map value (+1e-8)
  uint64_t seed;
};

// (pixels, classes): int64 flat batch indices, ascending, of the pixels inside a foreground square (class 1)
// or a background square (class 0) but not both. maps (B, h, w) uint8 levels or float32 in [0, 1]; roi bool.
std::tuple<at::Tensor, at::Tensor> seed_pixels_cpu(const at::Tensor& maps, const at::Tensor& roi, double max_p,
                                                    double min_p, int64_t n_fg, int64_t n_bg, int64_t ksz,
                                                    bool weighted, int64_t seed);

// (B, h, w) int64 label image of the same seeds: 1 foreground, 0 background, ignore_index elsewhere.
at::Tensor seed_labels_cpu(const at::Tensor& maps, const at::Tensor& roi, double max_p, double min_p, int64_t n_fg,
                           int64_t n_bg, int64_t ksz, bool weighted, int64_t seed, int64_t ignore_index);

}  // namespace seeds
}  // namespace tcam_ray
