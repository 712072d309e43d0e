// CPU permutohedral filter. One lattice per image, built once and used for
// all K value channels at once (values are splatted as K-vectors).
//
// Threads: when there are at least as many images as threads, each thread
// filters whole images (no sharing, best cache use); otherwise the images are
// taken one at a time and the lattice build, splat, blur and slice are each
// split across threads.
#include "permutohedral.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

namespace tcam_ray {
namespace crf {
namespace {

// The first D lattice coordinates of a vertex (the last is implied by
// sum = 0), each biased by 32768 into a 16-bit lane of 64-bit words, so keys
// compare and hash word by word and the vertices of a simplex, or a vertex's
// blur neighbours, are reached by lane-wise adds (the bias keeps every lane in
// [0, 65535], so no carry crosses lanes). Built with shifts, not memcpy:
// mixed-size stores followed by a wide load stall store forwarding.
template <int D>
struct PackedKey {
  static constexpr int kWords = (D + 3) / 4;
  uint64_t w[kWords];

  static PackedKey pack(const int* coords) {
    PackedKey key;
    for (int i = 0; i < kWords; ++i) key.w[i] = 0;
    for (int i = 0; i < D; ++i) key.w[i / 4] |= uint64_t(uint16_t(coords[i] + 32768)) << (16 * (i % 4));
    return key;
  }
  // Adds `delta` to every coordinate, plus `axis_delta` to coordinate `axis` (if < D).
  PackedKey shifted(int delta, int axis, int axis_delta) const {
    PackedKey key = *this;
    for (int i = 0; i < D; ++i) key.w[i / 4] += uint64_t(int64_t(delta)) << (16 * (i % 4));
    if (axis < D) key.w[axis / 4] += uint64_t(int64_t(axis_delta)) << (16 * (axis % 4));
    return key;
  }
  bool operator==(const PackedKey& other) const {
    for (int i = 0; i < kWords; ++i) {
      if (w[i] != other.w[i]) return false;
    }
    return true;
  }
  uint32_t hash() const {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < kWords; ++i) {
      h = (h ^ w[i]) * 0xFF51AFD7ED558CCDull;
      h ^= h >> 29;
    }
    return static_cast<uint32_t>(h ^ (h >> 32));
  }
};

// Open-addressing hash table (linear probing) mapping lattice keys to dense
// indices 0..size()-1. Slots hold the key itself, so a probe is one memory
// access. The table is sized from the previous image's lattice (images of a
// batch have similar lattices) and grows when half full; memory is reused
// across images.
template <int D>
class LatticeTable {
 public:
  void clear(int64_t expected_entries) {
    size_t capacity = 1024;
    while (capacity < static_cast<size_t>(2 * expected_entries)) capacity <<= 1;
    if (slots_.size() != capacity) {
      slots_.assign(capacity, Slot{PackedKey<D>{}, -1});
    } else {
      for (Slot& slot : slots_) slot.index = -1;
    }
    mask_ = capacity - 1;
    keys_.clear();
  }

  int32_t insert(const PackedKey<D>& key) {
    for (size_t i = key.hash() & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.index < 0) {
        if (2 * (keys_.size() + 1) > slots_.size()) {
          grow();
          return insert(key);
        }
        slot.key = key;
        slot.index = static_cast<int32_t>(keys_.size());
        keys_.push_back(key);
        return slot.index;
      }
      if (slot.key == key) return slot.index;
    }
  }

  int32_t find(const PackedKey<D>& key) const {
    for (size_t i = key.hash() & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.index < 0) return -1;
      if (slot.key == key) return slot.index;
    }
  }

  int64_t size() const { return static_cast<int64_t>(keys_.size()); }
  const PackedKey<D>& key(int64_t index) const { return keys_[index]; }

 private:
  struct Slot {
    PackedKey<D> key;
    int32_t index;
  };

  void grow() {
    std::vector<Slot> bigger(slots_.size() * 2, Slot{PackedKey<D>{}, -1});
    mask_ = bigger.size() - 1;
    for (int32_t index = 0; index < static_cast<int32_t>(keys_.size()); ++index) {
      size_t i = keys_[index].hash() & mask_;
      while (bigger[i].index >= 0) i = (i + 1) & mask_;
      bigger[i] = Slot{keys_[index], index};
    }
    slots_.swap(bigger);
  }

  std::vector<Slot> slots_;
  std::vector<PackedKey<D>> keys_;  // by index, for the neighbour search
  size_t mask_ = 0;
};

// Everything one image's filtering needs; kept per thread and reused across
// images so that nothing is allocated per pixel or per image in steady state.
template <int D>
struct Lattice {
  LatticeTable<D> table;
  std::vector<int32_t> offset;      // [P][D+1] lattice index of each vertex of each point's simplex
  std::vector<float> weight;        // [P][D+1] barycentric weights
  std::vector<int32_t> neighbours;  // [D+1][M][2] blur neighbours, +1 shifted (0 = absent)
  std::vector<float> grid_a, grid_b;  // [(M+1)][K] lattice values, row 0 is the absent neighbour

  int64_t size() const { return table.size(); }
};

template <int D>
struct FilterArgs {
  const float* values;    // [K][P] of one image
  const float* features;  // [D][P]
  float* out;             // [K][P]
  int64_t channels;
  int64_t points;
  bool reverse;
  ElevationScales<D> scales;
  float alpha;
};

// Locates every point's simplex and inserts its vertices. Consecutive points
// (neighbouring pixels) often share vertices: a vertex whose key equals the
// previous point's vertex of the same remainder reuses its index unhashed.
template <int D>
bool build_lattice(Lattice<D>& lattice, const FilterArgs<D>& args) {
  const int64_t P = args.points;
  lattice.table.clear(std::max<int64_t>(lattice.size(), 256));
  lattice.offset.resize(P * (D + 1));
  lattice.weight.resize(P * (D + 1));
  int32_t* offset = lattice.offset.data();
  float* weight = lattice.weight.data();

  int rem0[D + 1];
  int rank[D + 1];
  int axis_of_rank[D + 1];
  PackedKey<D> recent_key[D + 1];
  int32_t recent_index[D + 1];
  for (int r = 0; r <= D; ++r) recent_index[r] = -1;
  bool in_range = true;
  for (int64_t p = 0; p < P; ++p) {
    in_range &= locate_simplex<D>(args.features + p, P, args.scales, kCpuKeyLimit, rem0, rank, weight + p * (D + 1));
    for (int i = 0; i <= D; ++i) axis_of_rank[rank[i]] = i;
    int32_t* vertex = offset + p * (D + 1);
    // Vertex r is rem0 + r on every coordinate, less D+1 on the r coordinates
    // of highest rank (see vertex_key): step r -> r+1 adds 1 everywhere and
    // takes D+1 from the coordinate of rank D-r.
    PackedKey<D> key = PackedKey<D>::pack(rem0);
    for (int r = 0; r <= D; ++r) {
      if (recent_index[r] < 0 || !(key == recent_key[r])) {
        recent_key[r] = key;
        recent_index[r] = lattice.table.insert(key);
      }
      vertex[r] = recent_index[r];
      if (r < D) key = key.shifted(1, axis_of_rank[D - r], -(D + 1));
    }
  }
  return in_range;
}

// For every lattice point and direction, the indices of its two neighbours.
// Only the backward neighbour is looked up: b = backward(a) means a =
// forward(b), which fills the other half without a second hash probe.
template <int D>
void find_neighbours(Lattice<D>& lattice) {
  const int64_t M = lattice.size();
  lattice.neighbours.assign((D + 1) * M * 2, 0);
  int32_t* neighbours = lattice.neighbours.data();
  at::parallel_for(0, D + 1, 1, [&](int64_t axis_begin, int64_t axis_end) {
    for (int64_t axis = axis_begin; axis < axis_end; ++axis) {
      int32_t* axis_neighbours = neighbours + axis * M * 2;
      for (int64_t a = 0; a < M; ++a) {
        // One step back along `axis`: -1 on every coordinate, +D on `axis`.
        const int32_t b = lattice.table.find(lattice.table.key(a).shifted(-1, static_cast<int>(axis), D + 1));
        if (b >= 0) {
          axis_neighbours[2 * a] = b + 1;
          axis_neighbours[2 * b + 1] = static_cast<int32_t>(a) + 1;
        }
      }
    }
  });
}

// Adds each point's K values, weighted, into the rows of its simplex's
// vertices. With several threads each takes a slice of the channels.
template <int D>
void splat(Lattice<D>& lattice, const FilterArgs<D>& args) {
  const int64_t K = args.channels, P = args.points, M = lattice.size();
  lattice.grid_a.assign((M + 1) * K, 0.f);
  lattice.grid_b.resize((M + 1) * K);
  std::fill(lattice.grid_b.begin(), lattice.grid_b.begin() + K, 0.f);
  float* grid = lattice.grid_a.data();
  const int32_t* offset = lattice.offset.data();
  const float* weight = lattice.weight.data();
  at::parallel_for(0, K, 1, [&](int64_t k_begin, int64_t k_end) {
    for (int64_t p = 0; p < P; ++p) {
      const int32_t* vertex = offset + p * (D + 1);
      const float* w = weight + p * (D + 1);
      for (int64_t k = k_begin; k < k_end; ++k) {
        const float v = args.values[k * P + p];
        for (int r = 0; r <= D; ++r) grid[(vertex[r] + 1) * K + k] += w[r] * v;
      }
    }
  });
}

// [1/2, 1, 1/2] blur along each lattice direction in turn (reverse order for
// the transposed filter). Leaves the result in grid_a.
template <int D>
void blur(Lattice<D>& lattice, const FilterArgs<D>& args) {
  const int64_t K = args.channels, M = lattice.size();
  for (int step = 0; step <= D; ++step) {
    const int axis = args.reverse ? D - step : step;
    const int32_t* axis_neighbours = lattice.neighbours.data() + axis * M * 2;
    const float* source = lattice.grid_a.data();
    float* target = lattice.grid_b.data();
    at::parallel_for(0, M, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t a = begin; a < end; ++a) {
        const float* own = source + (a + 1) * K;
        const float* back = source + axis_neighbours[2 * a] * K;
        const float* forward = source + axis_neighbours[2 * a + 1] * K;
        float* result = target + (a + 1) * K;
        for (int64_t k = 0; k < K; ++k) result[k] = own[k] + 0.5f * (back[k] + forward[k]);
      }
    });
    lattice.grid_a.swap(lattice.grid_b);
  }
}

// Interpolates each point's K outputs from its simplex's vertices.
template <int D>
void slice(const Lattice<D>& lattice, const FilterArgs<D>& args) {
  const int64_t K = args.channels, P = args.points;
  const float* grid = lattice.grid_a.data();
  const int32_t* offset = lattice.offset.data();
  const float* weight = lattice.weight.data();
  at::parallel_for(0, P, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int32_t* vertex = offset + p * (D + 1);
      const float* w = weight + p * (D + 1);
      for (int64_t k = 0; k < K; ++k) {
        float acc = 0.f;
        for (int r = 0; r <= D; ++r) acc += w[r] * grid[(vertex[r] + 1) * K + k];
        args.out[k * P + p] = acc * args.alpha;
      }
    }
  });
}

template <int D>
bool filter_image(Lattice<D>& lattice, const FilterArgs<D>& args) {
  const bool in_range = build_lattice<D>(lattice, args);
  find_neighbours<D>(lattice);
  splat<D>(lattice, args);
  blur<D>(lattice, args);
  slice<D>(lattice, args);
  return in_range;
}

template <int D>
void filter_batch(const at::Tensor& values, const at::Tensor& features, at::Tensor& out, bool reverse) {
  const int64_t N = values.size(0), K = values.size(1), P = values.size(2);
  const float* V = values.data_ptr<float>();
  const float* F = features.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const ElevationScales<D> scales = make_elevation_scales<D>();
  const float alpha = slice_alpha<D>();
  std::atomic<bool> all_in_range{true};

  auto filter_images = [&](int64_t begin, int64_t end) {
    Lattice<D> lattice;
    for (int64_t n = begin; n < end; ++n) {
      FilterArgs<D> args{V + n * K * P, F + n * D * P, O + n * K * P, K, P, reverse, scales, alpha};
      if (!filter_image<D>(lattice, args)) all_in_range = false;
    }
  };
  // Nested at::parallel_for calls run inline, so in the first branch every
  // phase of filter_image is serial inside its image's thread.
  if (N >= at::get_num_threads()) {
    at::parallel_for(0, N, 1, filter_images);
  } else {
    filter_images(0, N);
  }
  TORCH_CHECK(all_in_range.load(),
              "permutohedral_filter: `features` has non-finite values or values too large for the lattice "
              "(elevated lattice coordinates beyond +-", kCpuKeyLimit,
              "); divide the features by their standard deviations (sigma) before filtering");
}

}  // namespace

at::Tensor permutohedral_filter_cpu(const at::Tensor& values, const at::Tensor& features, bool reverse) {
  check_filter_inputs(values, features, c10::DeviceType::CPU);
  const at::Tensor V = values.contiguous();
  const at::Tensor F = features.contiguous();
  at::Tensor out = at::empty_like(V, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  TCAM_CRF_DISPATCH_DIM(F.size(1), [&] { filter_batch<kDim>(V, F, out, reverse); });
  return out;
}

}  // namespace crf
}  // namespace tcam_ray
