// Permutohedral-lattice Gaussian filtering (Adams, Baek and Davis 2010).
//
// out[n, k, i] ~= sum_j exp(-|F[n,:,i] - F[n,:,j]|^2 / 2) * V[n, k, j]
//
// The arithmetic (elevation scale sqrt(2/3)(D+1), [1/2, 1, 1/2] blur along
// each of the D+1 lattice directions, slice factor alpha = 1/(1+2^-D)) is the
// one of Kraehenbuehl's densecrf lattice that the TCAM/rloss code calls, so
// the output has the same normalisation as the paper's op (about 0.56x the
// exact Gaussian sum for the 5-D bilateral features; a point's own weight is
// about 0.5 instead of 1). See tcam_ray/ops/crf.py for the measured figures.
//
// This header holds the per-point math shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TCAM_HD __host__ __device__ __forceinline__
#else
#define TCAM_HD inline
#endif

namespace tcam_ray {
namespace crf {

// Feature dimensions compiled in (D = 1 .. kMaxFeatureDim).
constexpr int kMaxFeatureDim = 16;

// Limits on |elevated coordinate|. CPU: its wide keys are 16-bit (keys and
// their blur neighbours are within 2(D+1) of the rounded point). CUDA: its
// keys are 32-bit, but float32 rounding bounds it first: from about 1e7 the
// rounded coordinates no longer sum to within D+1 of zero, the rank
// correction in locate_simplex fails and u is indexed out of bounds. The
// CPU's limit, far inside both, makes the backends accept the same features
// (tcam_ray/ops/crf.py checks them in Python on the CPU).
constexpr float kCpuKeyLimit = 30000.0f;
constexpr float kCudaKeyLimit = kCpuKeyLimit;

at::Tensor permutohedral_filter_cpu(const at::Tensor& values, const at::Tensor& features, bool reverse);
#ifdef WITH_CUDA
at::Tensor permutohedral_filter_cuda(const at::Tensor& values, const at::Tensor& features, bool reverse);
#endif

// Shape/dtype/device checks shared by both backends; errors name the argument.
void check_filter_inputs(const at::Tensor& values, const at::Tensor& features, c10::DeviceType device);

// Diagonal of the elevation matrix E (p.5 of Adams et al.), folded with the
// inverse of the filter's expected standard deviation (p.6).
template <int D>
struct ElevationScales {
  float s[D];
};

template <int D>
inline ElevationScales<D> make_elevation_scales() {
  ElevationScales<D> out{};
  const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * (D + 1));
  for (int i = 0; i < D; ++i) {
    out.s[i] = static_cast<float>(1.0 / std::sqrt(double((i + 2) * (i + 1))) * inv_std_dev);
  }
  return out;
}

// Slice factor: the blur kernel's weight at zero displacement is 1 + 2^-D
// (stepping +1 or -1 along all D+1 directions returns to the start).
template <int D>
inline float slice_alpha() {
  return 1.0f / (1.0f + std::pow(2.0f, -static_cast<float>(D)));
}

// Finds the simplex enclosing one point: its remainder-0 vertex, the rank of
// each coordinate and the barycentric weights of its D+1 vertices. `feature`
// points at coordinate 0, coordinate i is at feature[i * stride]. Returns
// false when an elevated coordinate is non-finite or beyond key_limit; the
// point is then placed at the origin, so that the caller can report the
// error after the loop (or, on CUDA, go on without a sync).
template <int D>
TCAM_HD bool locate_simplex(const float* feature, int64_t stride, const ElevationScales<D>& scales,
                            float key_limit, int* rem0, int* rank, float* bary) {
  float elevated[D + 1];
  float partial_sum = 0.f;
  for (int j = D; j > 0; --j) {
    const float cf = feature[(j - 1) * stride] * scales.s[j - 1];
    elevated[j] = partial_sum - j * cf;
    partial_sum += cf;
  }
  elevated[0] = partial_sum;

  // All coordinates or none: zeroing only some would take the point off the
  // plane sum(x) = 0, and the rank correction below would then index u out
  // of bounds.
  bool in_range = true;
  for (int i = 0; i <= D; ++i) in_range &= fabsf(elevated[i]) < key_limit;  // false for NaN
  if (!in_range) {
    for (int i = 0; i <= D; ++i) elevated[i] = 0.f;
  }

  const float down_factor = 1.0f / (D + 1);
  const float up_factor = static_cast<float>(D + 1);
  int sum = 0;
  for (int i = 0; i <= D; ++i) {
    const float v = down_factor * elevated[i];
    const float up = ceilf(v) * up_factor;
    const float down = floorf(v) * up_factor;
    const int nearest = (up - elevated[i] < elevated[i] - down) ? static_cast<int>(up) : static_cast<int>(down);
    rem0[i] = nearest;
    sum += nearest / (D + 1);
  }

  for (int i = 0; i <= D; ++i) rank[i] = 0;
  for (int i = 0; i < D; ++i) {
    const float di = elevated[i] - rem0[i];
    for (int j = i + 1; j <= D; ++j) {
      const int i_lower = di < elevated[j] - rem0[j];  // branchless: the outcome is data-random
      rank[i] += i_lower;
      rank[j] += 1 - i_lower;
    }
  }

  // Bring the remainder-0 point back onto the plane sum(x) = 0.
  for (int i = 0; i <= D; ++i) {
    rank[i] += sum;
    if (rank[i] < 0) {
      rank[i] += D + 1;
      rem0[i] += D + 1;
    } else if (rank[i] > D) {
      rank[i] -= D + 1;
      rem0[i] -= D + 1;
    }
  }

  // Barycentric weights: with u[rank[i]] = (elevated[i] - rem0[i]) / (D+1),
  // vertex m gets u[D-m] - u[D-m+1] (Adams et al. p.10). Gathering by rank
  // avoids read-modify-writes at data-dependent addresses.
  float u[D + 2];
  for (int i = 0; i <= D; ++i) u[rank[i]] = (elevated[i] - rem0[i]) * down_factor;
  bary[0] = 1.0f + u[D] - u[0];
  for (int m = 1; m <= D; ++m) bary[m] = u[D - m] - u[D - m + 1];
  return in_range;
}

// Key (first D lattice coordinates; the last one is implied by sum = 0) of
// the simplex vertex with the given remainder.
template <int D, typename KeyT>
TCAM_HD void vertex_key(const int* rem0, const int* rank, int remainder, KeyT* key) {
  for (int i = 0; i < D; ++i) {
    key[i] = static_cast<KeyT>(rem0[i] + remainder - (rank[i] > D - remainder ? D + 1 : 0));
  }
}

// Key of the neighbour one step back along lattice direction `axis`
// (0 .. D): every coordinate -1 except coordinate `axis`, which gets +D.
// The neighbour one step forward is the inverse move.
template <int D, typename KeyT>
TCAM_HD void backward_neighbour_key(const KeyT* key, int axis, KeyT* out) {
  for (int i = 0; i < D; ++i) out[i] = static_cast<KeyT>(key[i] - 1);
  if (axis < D) out[axis] = static_cast<KeyT>(key[axis] + D);
}

}  // namespace crf
}  // namespace tcam_ray

// Expands BODY with the compile-time constant `kDim` equal to `dim`.
#define TCAM_CRF_DISPATCH_DIM(dim, ...)                                            \
  [&] {                                                                            \
    switch (dim) {                                                                 \
      case 1: { constexpr int kDim = 1; return __VA_ARGS__(); }                    \
      case 2: { constexpr int kDim = 2; return __VA_ARGS__(); }                    \
      case 3: { constexpr int kDim = 3; return __VA_ARGS__(); }                    \
      case 4: { constexpr int kDim = 4; return __VA_ARGS__(); }                    \
      case 5: { constexpr int kDim = 5; return __VA_ARGS__(); }                    \
      case 6: { constexpr int kDim = 6; return __VA_ARGS__(); }                    \
      case 7: { constexpr int kDim = 7; return __VA_ARGS__(); }                    \
      case 8: { constexpr int kDim = 8; return __VA_ARGS__(); }                    \
      case 9: { constexpr int kDim = 9; return __VA_ARGS__(); }                    \
      case 10: { constexpr int kDim = 10; return __VA_ARGS__(); }                  \
      case 11: { constexpr int kDim = 11; return __VA_ARGS__(); }                  \
      case 12: { constexpr int kDim = 12; return __VA_ARGS__(); }                  \
      case 13: { constexpr int kDim = 13; return __VA_ARGS__(); }                  \
      case 14: { constexpr int kDim = 14; return __VA_ARGS__(); }                  \
      case 15: { constexpr int kDim = 15; return __VA_ARGS__(); }                  \
      case 16: { constexpr int kDim = 16; return __VA_ARGS__(); }                  \
      default: TORCH_CHECK(false, "permutohedral_filter: unsupported feature dim ", dim); \
    }                                                                              \
  }()
