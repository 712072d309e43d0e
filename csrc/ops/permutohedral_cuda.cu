// CUDA permutohedral filter: the whole batch in one set of launches, with no
// host synchronisation.
//
// Every simplex vertex of every point (N * P * (D+1) "vertex slots") gets its
// key; one global hash table, keyed by (image, key), maps each lattice point
// to the first vertex slot that inserted it (its representative). Lattice
// values live at the representative's position, so no compaction (and no
// device-to-host read of the lattice size) is needed; the representatives are
// appended to a list that the blur kernels walk.
#include "permutohedral.h"

#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

namespace tcam_ray {
namespace crf {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t items) { return (items + kThreads - 1) / kThreads; }

__device__ __forceinline__ uint32_t finalise_hash(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

template <int D>
__device__ __forceinline__ uint32_t key_hash(int64_t image, const int* key) {
  uint32_t h = static_cast<uint32_t>(image) * 0x9E3779B1u;
  for (int i = 0; i < D; ++i) h = (h ^ static_cast<uint32_t>(key[i])) * 0x01000193u;
  return finalise_hash(h);
}

// The hash table and the keys it refers to.
template <int D>
struct Table {
  int* slots;             // representative vertex slot, -1 when empty
  uint32_t mask;          // capacity - 1
  const int* keys;        // [vertex slots][D]
  int64_t slots_per_image;  // P * (D+1): a vertex slot's image is slot / slots_per_image

  __device__ __forceinline__ bool holds(int vertex, int64_t image, const int* key) const {
    if (vertex / slots_per_image != image) return false;
    const int* other = keys + static_cast<int64_t>(vertex) * D;
    for (int i = 0; i < D; ++i) {
      if (other[i] != key[i]) return false;
    }
    return true;
  }

  __device__ int find(int64_t image, const int* key) const {
    for (uint32_t i = key_hash<D>(image, key) & mask;; i = (i + 1) & mask) {
      const int vertex = slots[i];
      if (vertex < 0) return -1;
      if (holds(vertex, image, key)) return vertex;
    }
  }
};

template <int D>
__global__ void locate_kernel(const float* __restrict__ features, int64_t N, int64_t P, ElevationScales<D> scales,
                              float* __restrict__ weight, int* __restrict__ keys) {
  const int64_t point = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (point >= N * P) return;
  const int64_t n = point / P, p = point % P;
  int rem0[D + 1];
  int rank[D + 1];
  float bary[D + 1];
  // A point out of range (non-finite, or beyond kCudaKeyLimit) is placed at
  // the origin: reporting it would need a sync.
  locate_simplex<D>(features + n * D * P + p, P, scales, kCudaKeyLimit, rem0, rank, bary);
  for (int r = 0; r <= D; ++r) {
    const int64_t vertex = point * (D + 1) + r;
    weight[vertex] = bary[r];
    vertex_key<D, int>(rem0, rank, r, keys + vertex * D);
  }
}

// Inserts every vertex slot's key. The first slot to claim a table entry
// becomes the lattice point's representative and joins the point list.
template <int D>
__global__ void insert_kernel(Table<D> table, int64_t vertices, int* __restrict__ representative,
                              int* __restrict__ point_list, int* __restrict__ point_count) {
  const int64_t vertex = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (vertex >= vertices) return;
  const int* key = table.keys + vertex * D;
  const int64_t image = vertex / table.slots_per_image;
  for (uint32_t i = key_hash<D>(image, key) & table.mask;; i = (i + 1) & table.mask) {
    int owner = *reinterpret_cast<volatile int*>(table.slots + i);
    if (owner < 0) {
      owner = atomicCAS(table.slots + i, -1, static_cast<int>(vertex));
      if (owner < 0) {
        representative[vertex] = static_cast<int>(vertex);
        point_list[atomicAdd(point_count, 1)] = static_cast<int>(vertex);
        return;
      }
    }
    if (table.holds(owner, image, key)) {
      representative[vertex] = owner;
      return;
    }
  }
}

template <int D>
__global__ void splat_kernel(const float* __restrict__ values, const float* __restrict__ weight,
                             const int* __restrict__ representative, int64_t vertices, int64_t P, int64_t K,
                             float* __restrict__ grid) {
  const int64_t vertex = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (vertex >= vertices) return;
  const int64_t point = vertex / (D + 1);
  const int64_t n = point / P, p = point % P;
  const float w = weight[vertex];
  float* target = grid + static_cast<int64_t>(representative[vertex]) * K;
  for (int64_t k = 0; k < K; ++k) atomicAdd(target + k, w * values[(n * K + k) * P + p]);
}

// One [1/2, 1, 1/2] pass along `axis` for every lattice point; the
// neighbours are found by hashing their keys.
template <int D>
__global__ void blur_kernel(Table<D> table, const int* __restrict__ point_list, const int* __restrict__ point_count,
                            int axis, int64_t K, const float* __restrict__ source, float* __restrict__ target) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= *point_count) return;
  const int point = point_list[i];
  const int64_t image = point / table.slots_per_image;
  int key[D];
  int back[D];
  int forward[D];
  for (int j = 0; j < D; ++j) key[j] = table.keys[static_cast<int64_t>(point) * D + j];
  backward_neighbour_key<D, int>(key, axis, back);
  for (int j = 0; j < D; ++j) forward[j] = key[j] + 1;
  if (axis < D) forward[axis] = key[axis] - D;
  const int b = table.find(image, back);
  const int f = table.find(image, forward);
  for (int64_t k = 0; k < K; ++k) {
    float sum = 0.f;
    if (b >= 0) sum += source[static_cast<int64_t>(b) * K + k];
    if (f >= 0) sum += source[static_cast<int64_t>(f) * K + k];
    target[static_cast<int64_t>(point) * K + k] = source[static_cast<int64_t>(point) * K + k] + 0.5f * sum;
  }
}

template <int D>
__global__ void slice_kernel(const float* __restrict__ weight, const int* __restrict__ representative,
                             const float* __restrict__ grid, int64_t points, int64_t P, int64_t K, float alpha,
                             float* __restrict__ out) {
  const int64_t point = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (point >= points) return;
  const int64_t n = point / P, p = point % P;
  for (int64_t k = 0; k < K; ++k) {
    float acc = 0.f;
    for (int r = 0; r <= D; ++r) {
      const int64_t vertex = point * (D + 1) + r;
      acc += weight[vertex] * grid[static_cast<int64_t>(representative[vertex]) * K + k];
    }
    out[(n * K + k) * P + p] = acc * alpha;
  }
}

template <int D>
void filter_batch_cuda(const at::Tensor& values, const at::Tensor& features, at::Tensor& out, bool reverse) {
  const int64_t N = values.size(0), K = values.size(1), P = values.size(2);
  const int64_t points = N * P;
  const int64_t vertices = points * (D + 1);
  TORCH_CHECK(vertices < std::numeric_limits<int>::max() / 2,
              "permutohedral_filter (CUDA): N * P * (D + 1) = ", vertices,
              " vertex slots exceeds the 32-bit index range; split the batch");
  uint32_t capacity = 1024;
  while (capacity < static_cast<uint64_t>(2 * vertices)) capacity <<= 1;

  const auto float_options = values.options();
  const auto int_options = values.options().dtype(at::kInt);
  at::Tensor weight = at::empty({vertices}, float_options);
  at::Tensor keys = at::empty({vertices * D}, int_options);
  at::Tensor slots = at::full({static_cast<int64_t>(capacity)}, -1, int_options);
  at::Tensor representative = at::empty({vertices}, int_options);
  at::Tensor point_list = at::empty({vertices}, int_options);
  at::Tensor point_count = at::zeros({1}, int_options);
  at::Tensor grid = at::zeros({vertices * K}, float_options);
  at::Tensor spare = at::empty({vertices * K}, float_options);

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Table<D> table{slots.data_ptr<int>(), capacity - 1, keys.data_ptr<int>(), P * (D + 1)};

  locate_kernel<D><<<blocks_for(points), kThreads, 0, stream>>>(
      features.data_ptr<float>(), N, P, make_elevation_scales<D>(), weight.data_ptr<float>(), keys.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  insert_kernel<D><<<blocks_for(vertices), kThreads, 0, stream>>>(
      table, vertices, representative.data_ptr<int>(), point_list.data_ptr<int>(), point_count.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  splat_kernel<D><<<blocks_for(vertices), kThreads, 0, stream>>>(
      values.data_ptr<float>(), weight.data_ptr<float>(), representative.data_ptr<int>(), vertices, P, K,
      grid.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int step = 0; step <= D; ++step) {
    const int axis = reverse ? D - step : step;
    // Launched for the upper bound of lattice points; threads past the
    // device-side count return at once.
    blur_kernel<D><<<blocks_for(vertices), kThreads, 0, stream>>>(
        table, point_list.data_ptr<int>(), point_count.data_ptr<int>(), axis, K, grid.data_ptr<float>(),
        spare.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    std::swap(grid, spare);
  }
  slice_kernel<D><<<blocks_for(points), kThreads, 0, stream>>>(
      weight.data_ptr<float>(), representative.data_ptr<int>(), grid.data_ptr<float>(), points, P, K,
      slice_alpha<D>(), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor permutohedral_filter_cuda(const at::Tensor& values, const at::Tensor& features, bool reverse) {
  check_filter_inputs(values, features, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard device_guard(values.device());
  const at::Tensor V = values.contiguous();
  const at::Tensor F = features.contiguous();
  at::Tensor out = at::empty_like(V, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  TCAM_CRF_DISPATCH_DIM(F.size(1), [&] { filter_batch_cuda<kDim>(V, F, out, reverse); });
  return out;
}

}  // namespace crf
}  // namespace tcam_ray
