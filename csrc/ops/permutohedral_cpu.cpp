// CPU permutohedral filter. One lattice per image, built once and used for
// all K value channels at once (values are splatted as K-vectors).
//
// Threads: when there are at least as many images as threads, each thread
// filters whole images, taking the next unfiltered image when it finishes one
// (no sharing, best cache use, and a thread that the OS delays does not hold
// the others back); otherwise the images are taken one at a time and the
// lattice build, splat, blur and slice are each split across threads.
//
// Speed (one 224x224 image, D = 5, K = 2, one core of this 2-core AMD EPYC:
// about 1.8 ms, against 8.5 ms for the first version): each point's simplex
// is located in blocks of points in structure-of-arrays form, branch-free so
// that the compiler vectorises it (locate_block); the lattice points are
// numbered with one probe per simplex vertex in an open-addressing table
// whose keys are usually one 64-bit word (NarrowKey), with the block's
// probes prefetched; splat, blur and slice are specialised for small K; the
// per-point arrays are kept per thread between calls (no page faults). The
// output is bit-identical to the first version's, and independent of the
// thread count.
#include "permutohedral.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace tcam_ray {
namespace crf {
namespace {

// ---------------------------------------------------------------------------
// Lattice keys

// The first D lattice coordinates of a vertex (the last is implied by
// sum = 0) packed into 64-bit words, kLanes coordinates of Bits bits per
// word: word j = sum over its coordinates c_i of c_i * 2^(Bits * lane(i)),
// modulo 2^64. The packing is linear, so the vertices of a simplex and a
// vertex's blur neighbours are reached by adding precomputed words, and it
// is one-to-one on any set of points whose coordinates each span less than
// 2^Bits values (the lowest lane where two keys differ differs by less than
// 2^Bits, so it cannot vanish modulo the next lane). Keys compare and hash
// word by word.
template <int D, int Bits>
struct PackedKey {
  static constexpr int kBits = Bits;
  static constexpr int kLanes = 64 / Bits;
  static constexpr int kWords = (D + kLanes - 1) / kLanes;
  uint64_t w[kWords];

  static PackedKey zero() {
    PackedKey key;
    for (int i = 0; i < kWords; ++i) key.w[i] = 0;
    return key;
  }
  template <typename Int>
  static PackedKey pack(const Int* coords) {
    PackedKey key = zero();
    for (int i = 0; i < D; ++i) key.w[i / kLanes] += uint64_t(int64_t(coords[i])) << (Bits * (i % kLanes));
    return key;
  }
  // Adds `delta` to every coordinate, plus `axis_delta` to coordinate `axis` (if < D).
  PackedKey shifted(int delta, int axis, int axis_delta) const {
    PackedKey key = *this;
    for (int i = 0; i < D; ++i) key.w[i / kLanes] += uint64_t(int64_t(delta)) << (Bits * (i % kLanes));
    if (axis < D) key.w[axis / kLanes] += uint64_t(int64_t(axis_delta)) << (Bits * (axis % kLanes));
    return key;
  }
  void add(const PackedKey& other) {
    for (int i = 0; i < kWords; ++i) w[i] += other.w[i];
  }
  bool operator==(const PackedKey& other) const {
    bool same = true;
    for (int i = 0; i < kWords; ++i) same &= w[i] == other.w[i];
    return same;
  }
  // Multiplicative (Fibonacci) hashing: the table uses the top bits.
  uint64_t hash() const {
    uint64_t h = w[0] * 0x9E3779B97F4A7C15ull;
    for (int i = 1; i < kWords; ++i) h = (h ^ (h >> 29) ^ w[i]) * 0xFF51AFD7ED558CCDull;
    return h;
  }
};

// Wide keys: 16-bit lanes, which hold any lattice the key limit allows
// (|elevated coordinate| < kCpuKeyLimit, so every coordinate, vertex or blur
// neighbour, spans less than 2^16). Narrow keys: as many bits per coordinate
// as make one word (D <= 4 needs no narrowing); used when the image's
// coordinates span little enough (always, for features divided by sensible
// sigmas), otherwise the image is rebuilt with wide keys.
template <int D>
using WideKey = PackedKey<D, 16>;
template <int D>
using NarrowKey = PackedKey<D, (D <= 4 ? 16 : 64 / D)>;
static_assert(2.0 * kCpuKeyLimit + 8 * (kMaxFeatureDim + 1) < 65536.0, "wide keys must hold every coordinate");

// Open-addressing hash table (linear probing) mapping lattice keys to dense
// indices 0..size()-1. Slots hold the key itself, so a probe is one memory
// access. The table is sized from the previous image's lattice (images of a
// batch have similar lattices) and grows when half full; memory is reused
// across images.
template <typename Key>
class LatticeTable {
 public:
  void clear(int64_t expected_entries) {
    size_t capacity = 1024;
    while (capacity < static_cast<size_t>(2 * expected_entries)) capacity <<= 1;
    if (slots_.size() != capacity) {
      slots_.assign(capacity, Slot{Key::zero(), -1});
    } else {
      for (Slot& slot : slots_) slot.index = -1;
    }
    set_capacity(capacity);
    keys_.clear();
  }

  int32_t insert(const Key& key) { return insert(key, key.hash()); }

  // Insert with the key's hash already computed (see prefetch).
  int32_t insert(const Key& key, uint64_t hash) {
    for (size_t i = hash >> shift_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.index < 0) {
        if (2 * (keys_.size() + 1) > slots_.size()) {
          grow();
          return insert(key, hash);
        }
        slot.key = key;
        slot.index = static_cast<int32_t>(keys_.size());
        keys_.push_back(key);
        return slot.index;
      }
      if (slot.key == key) return slot.index;
    }
  }

  // Starts loading the slot where a key of this hash is probed first.
  void prefetch(uint64_t hash) const { __builtin_prefetch(slots_.data() + (hash >> shift_)); }

  int32_t find(const Key& key) const {
    for (size_t i = key.hash() >> shift_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.index < 0) return -1;
      if (slot.key == key) return slot.index;
    }
  }

  int64_t size() const { return static_cast<int64_t>(keys_.size()); }
  const Key& key(int64_t index) const { return keys_[index]; }

 private:
  struct Slot {
    Key key;
    int32_t index;
  };

  void set_capacity(size_t capacity) {
    mask_ = capacity - 1;
    shift_ = 64 - std::countr_zero(capacity);
  }

  void grow() {
    std::vector<Slot> bigger(slots_.size() * 2, Slot{Key::zero(), -1});
    set_capacity(bigger.size());
    for (int32_t index = 0; index < static_cast<int32_t>(keys_.size()); ++index) {
      size_t i = keys_[index].hash() >> shift_;
      while (bigger[i].index >= 0) i = (i + 1) & mask_;
      bigger[i] = Slot{keys_[index], index};
    }
    slots_.swap(bigger);
  }

  std::vector<Slot> slots_;
  std::vector<Key> keys_;  // by index, for the neighbour search
  size_t mask_ = 0;
  int shift_ = 64;
};

// Hash tables of one key kind: the lattice's, and the per-slice tables of a
// split build (slice 0 uses `table`).
template <typename Key>
struct Tables {
  LatticeTable<Key> table;
  std::vector<LatticeTable<Key>> slices;
};

// Everything one image's filtering needs; kept per thread and reused across
// images so that nothing is allocated per pixel or per image in steady state.
template <int D>
struct Lattice {
  Tables<NarrowKey<D>> narrow;
  Tables<WideKey<D>> wide;
  bool is_wide = false;             // which tables hold the current image's lattice
  int64_t points = 0;               // lattice size M
  std::vector<int32_t> offset;      // [P][D+1] lattice index of each vertex of each point's simplex
  std::vector<float> weight;        // [P][D+1] barycentric weights
  std::vector<int32_t> neighbours;  // [D+1][M][2] blur neighbours, +1 shifted (0 = absent)
  std::vector<float> grid_a, grid_b;  // [(M+1)][K] lattice values, row 0 is the absent neighbour
  std::vector<float> channel_grids;   // [K][(M+1)] a split splat's per-channel sums

  int64_t size() const { return points; }
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

// ---------------------------------------------------------------------------
// Lattice build

// Points are located kBlock at a time in structure-of-arrays form: every
// step below is a fixed-length loop over the block's lanes with no branches,
// which the compiler vectorises (SSE2 baseline; an AVX2 clone is picked at
// load time where the CPU has it).
constexpr int kBlock = 64;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TCAM_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TCAM_CPU_CLONES
#endif

template <int D>
struct SimplexBlock {
  alignas(64) float elevated[D + 1][kBlock];
  alignas(64) int32_t rem0[D + 1][kBlock];          // remainder-0 vertex (then corrected onto sum = 0)
  alignas(64) int32_t rank[D + 1][kBlock];
  alignas(64) int32_t axis_of_rank[D + 1][kBlock];  // inverse permutation of rank
  alignas(64) float bary[D + 1][kBlock];
  int32_t rem0_min[D], rem0_max[D];                 // over the block's points
};

// The block form of locate_simplex (permutohedral.h), with the same float
// operations in the same order, so the results are bit-identical: floor and
// ceil are built from truncation (SSE2 has no rounding instruction), the
// remainder-0 coordinate is kept as k * (D+1) with the integer k (no integer
// division), ranks are sums of pairwise comparisons, selects are bit masks,
// and the by-rank gathers are select chains. Reads kBlock points: coordinate
// i of point p at features[i * stride + p]. Returns false when a coordinate
// was non-finite or beyond the key limit (it is then treated as 0; unlike
// locate_simplex, the rest of the point is kept: the selects below cannot
// index out of bounds, and the caller raises).
template <int D>
TCAM_CPU_CLONES bool locate_block(const float* __restrict__ features, int64_t stride,
                                  const ElevationScales<D>& scales, SimplexBlock<D>& b) {
  constexpr float kDown = 1.0f / (D + 1);
  constexpr float kUp = static_cast<float>(D + 1);
  alignas(64) float partial[kBlock];
  alignas(64) int32_t sum[kBlock];
  alignas(64) float diff[D + 1][kBlock];
  alignas(64) float u[D + 1][kBlock];
  for (int p = 0; p < kBlock; ++p) partial[p] = 0.f;
  for (int j = D; j > 0; --j) {
    const float scale = scales.s[j - 1];
    const float jf = static_cast<float>(j);
    const float* __restrict__ f = features + (j - 1) * stride;
    for (int p = 0; p < kBlock; ++p) {
      const float cf = f[p] * scale;
      b.elevated[j][p] = partial[p] - jf * cf;
      partial[p] += cf;
    }
  }
  for (int p = 0; p < kBlock; ++p) b.elevated[0][p] = partial[p];

  // Nearest remainder-0 coordinate (ties round down, as locate_simplex).
  int32_t bad = 0;
  for (int p = 0; p < kBlock; ++p) sum[p] = 0;
  for (int i = 0; i <= D; ++i) {
    for (int p = 0; p < kBlock; ++p) {
      const float raw = b.elevated[i][p];
      const int32_t ok = -static_cast<int32_t>(std::fabs(raw) < kCpuKeyLimit);  // all ones; 0 for NaN, too large
      const float e = std::bit_cast<float>(std::bit_cast<int32_t>(raw) & ok);
      bad |= ~ok;
      b.elevated[i][p] = e;
      const float v = kDown * e;
      const int32_t t = static_cast<int32_t>(v);  // |v| < 2^31: truncation is exact
      const int32_t lo = t - static_cast<int32_t>(v < static_cast<float>(t));    // floorf(v)
      const int32_t hi = lo + static_cast<int32_t>(static_cast<float>(lo) < v);  // ceilf(v)
      const float up = static_cast<float>(hi) * kUp;
      const float down = static_cast<float>(lo) * kUp;
      const int32_t k = lo + ((hi - lo) & -static_cast<int32_t>(up - e < e - down));
      b.rem0[i][p] = k * (D + 1);
      sum[p] += k;
    }
  }

  // Rank of each coordinate's remainder (0 = largest; ties: lower index first).
  for (int i = 0; i <= D; ++i) {
    for (int p = 0; p < kBlock; ++p) {
      diff[i][p] = b.elevated[i][p] - static_cast<float>(b.rem0[i][p]);
      b.rank[i][p] = 0;
    }
  }
  for (int i = 0; i < D; ++i) {
    for (int j = i + 1; j <= D; ++j) {
      for (int p = 0; p < kBlock; ++p) {
        const int32_t i_lower = diff[i][p] < diff[j][p];
        b.rank[i][p] += i_lower;
        b.rank[j][p] += 1 - i_lower;
      }
    }
  }

  // Bring the remainder-0 point back onto the plane sum(x) = 0.
  for (int i = 0; i <= D; ++i) {
    for (int p = 0; p < kBlock; ++p) {
      const int32_t r = b.rank[i][p] + sum[p];
      const int32_t adjust = ((D + 1) & -static_cast<int32_t>(r < 0)) - ((D + 1) & -static_cast<int32_t>(r > D));
      b.rank[i][p] = r + adjust;
      b.rem0[i][p] += adjust;
    }
  }
  for (int i = 0; i < D; ++i) {
    int32_t lo = std::numeric_limits<int32_t>::max(), hi = std::numeric_limits<int32_t>::min();
    for (int p = 0; p < kBlock; ++p) {
      lo = std::min(lo, b.rem0[i][p]);
      hi = std::max(hi, b.rem0[i][p]);
    }
    b.rem0_min[i] = lo;
    b.rem0_max[i] = hi;
  }

  // Barycentric weights: u[rank[i]] = (elevated[i] - rem0[i]) / (D+1);
  // vertex m gets u[D-m] - u[D-m+1] (Adams et al. p.10).
  for (int i = 0; i <= D; ++i) {
    for (int p = 0; p < kBlock; ++p) {
      diff[i][p] = (b.elevated[i][p] - static_cast<float>(b.rem0[i][p])) * kDown;
    }
  }
  for (int r = 0; r <= D; ++r) {
    for (int p = 0; p < kBlock; ++p) {
      float value = 0.f;
      int32_t axis = 0;
      for (int i = 0; i <= D; ++i) {
        const bool hit = b.rank[i][p] == r;
        value = hit ? diff[i][p] : value;
        axis = hit ? i : axis;
      }
      u[r][p] = value;
      b.axis_of_rank[r][p] = axis;
    }
  }
  for (int p = 0; p < kBlock; ++p) b.bary[0][p] = 1.0f + u[D][p] - u[0][p];
  for (int m = 1; m <= D; ++m) {
    for (int p = 0; p < kBlock; ++p) b.bary[m][p] = u[D - m][p] - u[D - m + 1][p];
  }
  return bad == 0;
}

// Outcome of building one slice of an image's lattice.
struct BuildStatus {
  bool in_range = true;  // every elevated coordinate finite and within the key limit
  bool fits = true;      // the coordinates fit the key's lanes (always true for wide keys)
  int32_t lo[kMaxFeatureDim], hi[kMaxFeatureDim];  // range of the remainder-0 coordinates seen
};

// The keys' lanes must hold every vertex (rem0 - (D+1) .. rem0 + D) and blur
// neighbour (one more step of -1/+D or +1/-D) of the points seen.
template <int D, typename Key>
bool coordinates_fit(const int32_t* lo, const int32_t* hi) {
  if (Key::kBits >= 16) return true;
  for (int i = 0; i < D; ++i) {
    if (int64_t(hi[i]) - lo[i] + 4 * (D + 1) >= (int64_t{1} << Key::kBits)) return false;
  }
  return true;
}

// Locates points [begin, end) of one item and inserts their simplices'
// vertices into `table`; writes offset/weight rows [begin, end). Stops early
// (fits = false) when the coordinates outgrow the key's lanes.
template <int D, typename Key>
BuildStatus build_range(LatticeTable<Key>& table, const float* features, int64_t P, const ElevationScales<D>& scales,
                        int64_t begin, int64_t end, int32_t* offset, float* weight) {
  // step[a]: the key change from a simplex's vertex r to vertex r+1 when the
  // coordinate that drops is axis a (the one of rank D-r): +1 on every
  // coordinate, -(D+1) on axis a (see vertex_key).
  Key step[D + 1];
  for (int a = 0; a <= D; ++a) step[a] = Key::zero().shifted(1, a, -(D + 1));
  SimplexBlock<D> block;
  alignas(64) float tail[D][kBlock];
  Key keys[kBlock * (D + 1)];
  uint64_t hashes[kBlock * (D + 1)];
  BuildStatus status;
  for (int i = 0; i < D; ++i) {
    status.lo[i] = std::numeric_limits<int32_t>::max();
    status.hi[i] = std::numeric_limits<int32_t>::min();
  }
  for (int64_t first = begin; first < end; first += kBlock) {
    const int count = static_cast<int>(std::min<int64_t>(kBlock, end - first));
    if (count == kBlock) {
      status.in_range &= locate_block<D>(features + first, P, scales, block);
    } else {
      // Pad with copies of the last point (so the block's range is the points').
      for (int d = 0; d < D; ++d) {
        for (int p = 0; p < kBlock; ++p) tail[d][p] = features[d * P + first + std::min(p, count - 1)];
      }
      status.in_range &= locate_block<D>(&tail[0][0], kBlock, scales, block);
    }
    for (int i = 0; i < D; ++i) {
      status.lo[i] = std::min(status.lo[i], block.rem0_min[i]);
      status.hi[i] = std::max(status.hi[i], block.rem0_max[i]);
    }
    if (!coordinates_fit<D, Key>(status.lo, status.hi)) {
      status.fits = false;
      return status;
    }
    // All the block's vertex keys and hashes first, prefetching their
    // slots, then the probes: the table's cache misses overlap.
    for (int p = 0; p < count; ++p) {
      float* w = weight + (first + p) * (D + 1);
      for (int r = 0; r <= D; ++r) w[r] = block.bary[r][p];
      int32_t coords[D];
      for (int i = 0; i < D; ++i) coords[i] = block.rem0[i][p];
      Key key = Key::pack(coords);
      for (int r = 0; r <= D; ++r) {
        keys[p * (D + 1) + r] = key;
        hashes[p * (D + 1) + r] = key.hash();
        table.prefetch(hashes[p * (D + 1) + r]);
        if (r < D) key.add(step[block.axis_of_rank[D - r][p]]);
      }
    }
    int32_t* vertex = offset + first * (D + 1);
    for (int v = 0; v < count * (D + 1); ++v) vertex[v] = table.insert(keys[v], hashes[v]);
  }
  return status;
}

// Locates every point's simplex and numbers the lattice points with keys of
// type Key. With one thread (or inside a per-image thread) the points are
// taken in order into the lattice's table. With several threads each takes a
// contiguous slice of the points into its own table, then the slices' tables
// are merged into the lattice's (in slice order) and their local indices
// remapped; a lattice point's index may then differ from the serial build's,
// which changes no sum's order (splat accumulates each lattice point's values
// in point order either way), so the output is the same.
template <int D, typename Key>
BuildStatus build_with(Tables<Key>& tables, int64_t& lattice_points, const FilterArgs<D>& args, int32_t* offset,
                       float* weight) {
  const int64_t P = args.points;
  LatticeTable<Key>& table = tables.table;
  table.clear(std::max<int64_t>(lattice_points, 256));
  const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t slices = std::min<int64_t>(threads, P / (128 * kBlock));  // slices of 8192 points or more
  if (slices <= 1) {
    BuildStatus status = build_range<D, Key>(table, args.features, P, args.scales, 0, P, offset, weight);
    lattice_points = table.size();
    return status;
  }
  // Slice boundaries on block multiples, so only the last block is partial.
  const int64_t blocks = (P + kBlock - 1) / kBlock;
  auto slice_begin = [&](int64_t s) { return std::min<int64_t>(P, (blocks * s / slices) * kBlock); };
  if (static_cast<int64_t>(tables.slices.size()) < slices) tables.slices.resize(slices);
  std::vector<BuildStatus> statuses(slices);
  at::parallel_for(0, slices, 1, [&](int64_t s_begin, int64_t s_end) {
    for (int64_t s = s_begin; s < s_end; ++s) {
      LatticeTable<Key>& slice_table = s == 0 ? table : tables.slices[s];
      if (s > 0) slice_table.clear(std::max<int64_t>(lattice_points, 256));
      statuses[s] = build_range<D, Key>(slice_table, args.features, P, args.scales, slice_begin(s),
                                        slice_begin(s + 1), offset, weight);
    }
  });
  BuildStatus status = statuses[0];
  for (int64_t s = 1; s < slices; ++s) {
    status.in_range &= statuses[s].in_range;
    status.fits &= statuses[s].fits;
    for (int i = 0; i < D; ++i) {
      status.lo[i] = std::min(status.lo[i], statuses[s].lo[i]);
      status.hi[i] = std::max(status.hi[i], statuses[s].hi[i]);
    }
  }
  status.fits &= coordinates_fit<D, Key>(status.lo, status.hi);
  if (!status.fits) return status;
  // Merge: local index -> index in the lattice's table.
  std::vector<std::vector<int32_t>> remap(slices);
  for (int64_t s = 1; s < slices; ++s) {
    const LatticeTable<Key>& local = tables.slices[s];
    remap[s].resize(local.size());
    for (int64_t i = 0; i < local.size(); ++i) remap[s][i] = table.insert(local.key(i));
  }
  // Remap slices 1.. with all threads (slice 0's indices are already final).
  at::parallel_for(slice_begin(1), P, 4 * kBlock, [&](int64_t begin, int64_t end) {
    int64_t s = 1;
    while (begin >= slice_begin(s + 1)) ++s;
    for (int64_t p = begin; p < end;) {
      const int64_t stop = std::min(end, slice_begin(s + 1));
      const int32_t* map = remap[s].data();
      for (int64_t i = p * (D + 1); i < stop * (D + 1); ++i) offset[i] = map[offset[i]];
      p = stop;
      ++s;
    }
  });
  lattice_points = table.size();
  return status;
}

// Builds with narrow keys, or with wide keys when the coordinates do not fit.
// Returns whether every coordinate was in range.
template <int D>
bool build_lattice(Lattice<D>& lattice, const FilterArgs<D>& args) {
  const int64_t P = args.points;
  lattice.offset.resize(P * (D + 1));
  lattice.weight.resize(P * (D + 1));
  int32_t* offset = lattice.offset.data();
  float* weight = lattice.weight.data();
  // (Narrow lanes of under 4(D+1) values could not even hold one simplex
  // and its neighbours: D > 10 always uses wide keys.)
  if constexpr (!std::is_same_v<NarrowKey<D>, WideKey<D>> && 4 * (D + 1) < (1 << NarrowKey<D>::kBits)) {
    const BuildStatus status = build_with<D>(lattice.narrow, lattice.points, args, offset, weight);
    if (status.fits) {
      lattice.is_wide = false;
      return status.in_range;
    }
  }
  lattice.is_wide = true;
  return build_with<D>(lattice.wide, lattice.points, args, offset, weight).in_range;
}

// For every lattice point and direction, the indices of its two neighbours.
// Only the backward neighbour is looked up: b = backward(a) means a =
// forward(b), which fills the other half without a second hash probe.
template <int D, typename Key>
void find_neighbours_with(const LatticeTable<Key>& table, int32_t* neighbours) {
  const int64_t M = table.size();
  // Threads (one or more axes each) only where the lattice is large enough
  // to pay for the fork and join.
  const int64_t grain = M >= 8192 ? 1 : D + 1;
  at::parallel_for(0, D + 1, grain, [&](int64_t axis_begin, int64_t axis_end) {
    for (int64_t axis = axis_begin; axis < axis_end; ++axis) {
      int32_t* axis_neighbours = neighbours + axis * M * 2;
      // One step back along `axis`: -1 on every coordinate, +D on `axis`.
      const Key back = Key::zero().shifted(-1, static_cast<int>(axis), D + 1);
      for (int64_t a = 0; a < M; ++a) {
        Key key = table.key(a);
        key.add(back);
        const int32_t b = table.find(key);
        if (b >= 0) {
          axis_neighbours[2 * a] = b + 1;
          axis_neighbours[2 * b + 1] = static_cast<int32_t>(a) + 1;
        }
      }
    }
  });
}

template <int D>
void find_neighbours(Lattice<D>& lattice) {
  const int64_t M = lattice.size();
  lattice.neighbours.assign((D + 1) * M * 2, 0);
  if (lattice.is_wide) {
    find_neighbours_with<D>(lattice.wide.table, lattice.neighbours.data());
  } else {
    find_neighbours_with<D>(lattice.narrow.table, lattice.neighbours.data());
  }
}

// ---------------------------------------------------------------------------
// Splat, blur, slice. KC is K when it is a small compile-time constant (the
// channel loops unroll), 0 for any K.

// Adds each point's K values, weighted, into the rows of its simplex's
// vertices. Each lattice row receives the points' contributions in point
// order, whatever KC and whatever the channel split below.
template <int D, int KC>
void splat_channels(const int32_t* __restrict__ offset, const float* __restrict__ weight,
                    const float* __restrict__ values, int64_t P, int64_t K, float* __restrict__ grid) {
  if constexpr (KC > 0) K = KC;
  for (int64_t p = 0; p < P; ++p) {
    const int32_t* vertex = offset + p * (D + 1);
    const float* w = weight + p * (D + 1);
    if constexpr (KC > 0) {
      float v[KC];
      for (int k = 0; k < KC; ++k) v[k] = values[k * P + p];
      for (int r = 0; r <= D; ++r) {
        float* row = grid + (vertex[r] + 1) * KC;
        for (int k = 0; k < KC; ++k) row[k] += w[r] * v[k];
      }
    } else {
      for (int r = 0; r <= D; ++r) {
        float* row = grid + (vertex[r] + 1) * K;
        for (int64_t k = 0; k < K; ++k) row[k] += w[r] * values[k * P + p];
      }
    }
  }
}

// With several threads (and K > 1, and enough points) each thread takes
// whole channels, accumulated in a channel-major buffer of its own (no two
// threads write to one cache line) and interleaved afterwards.
template <int D>
void splat(Lattice<D>& lattice, const FilterArgs<D>& args) {
  const int64_t K = args.channels, P = args.points, M = lattice.size();
  lattice.grid_a.assign((M + 1) * K, 0.f);
  lattice.grid_b.resize((M + 1) * K);
  std::fill(lattice.grid_b.begin(), lattice.grid_b.begin() + K, 0.f);
  float* grid = lattice.grid_a.data();
  const int32_t* offset = lattice.offset.data();
  const float* weight = lattice.weight.data();
  const bool split = K > 1 && P >= 8192 && !at::in_parallel_region() && at::get_num_threads() > 1;
  if (!split) {
    switch (K) {
      case 1: return splat_channels<D, 1>(offset, weight, args.values, P, K, grid);
      case 2: return splat_channels<D, 2>(offset, weight, args.values, P, K, grid);
      case 3: return splat_channels<D, 3>(offset, weight, args.values, P, K, grid);
      case 4: return splat_channels<D, 4>(offset, weight, args.values, P, K, grid);
      default: return splat_channels<D, 0>(offset, weight, args.values, P, K, grid);
    }
  }
  lattice.channel_grids.assign((M + 1) * K, 0.f);
  float* channel_grids = lattice.channel_grids.data();
  at::parallel_for(0, K, 1, [&](int64_t k_begin, int64_t k_end) {
    for (int64_t k = k_begin; k < k_end; ++k) {
      splat_channels<D, 1>(offset, weight, args.values + k * P, P, 1, channel_grids + k * (M + 1));
    }
  });
  for (int64_t m = 1; m <= M; ++m) {
    for (int64_t k = 0; k < K; ++k) grid[m * K + k] = channel_grids[k * (M + 1) + m];
  }
}

template <int KC>
void blur_rows(const int32_t* __restrict__ axis_neighbours, const float* __restrict__ source,
               float* __restrict__ target, int64_t K, int64_t begin, int64_t end) {
  if constexpr (KC > 0) K = KC;
  for (int64_t a = begin; a < end; ++a) {
    const float* own = source + (a + 1) * K;
    const float* back = source + axis_neighbours[2 * a] * K;
    const float* forward = source + axis_neighbours[2 * a + 1] * K;
    float* result = target + (a + 1) * K;
    for (int64_t k = 0; k < K; ++k) result[k] = own[k] + 0.5f * (back[k] + forward[k]);
  }
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
    // A pass costs about a nanosecond per value: threads only for large lattices.
    at::parallel_for(0, M, std::max<int64_t>(2048, 65536 / std::max<int64_t>(K, 1)), [&](int64_t begin, int64_t end) {
      switch (K) {
        case 1: return blur_rows<1>(axis_neighbours, source, target, K, begin, end);
        case 2: return blur_rows<2>(axis_neighbours, source, target, K, begin, end);
        default: return blur_rows<0>(axis_neighbours, source, target, K, begin, end);
      }
    });
    lattice.grid_a.swap(lattice.grid_b);
  }
}

// Interpolates each point's K outputs from its simplex's vertices (each
// output sums its vertices in order r = 0..D, whatever KC).
template <int D, int KC>
void slice_points(const int32_t* __restrict__ offset, const float* __restrict__ weight,
                  const float* __restrict__ grid, int64_t P, int64_t K, float alpha, float* __restrict__ out,
                  int64_t begin, int64_t end) {
  if constexpr (KC > 0) K = KC;
  for (int64_t p = begin; p < end; ++p) {
    const int32_t* vertex = offset + p * (D + 1);
    const float* w = weight + p * (D + 1);
    if constexpr (KC > 0) {
      float acc[KC];
      for (int k = 0; k < KC; ++k) acc[k] = 0.f;
      for (int r = 0; r <= D; ++r) {
        const float* row = grid + (vertex[r] + 1) * KC;
        for (int k = 0; k < KC; ++k) acc[k] += w[r] * row[k];
      }
      for (int k = 0; k < KC; ++k) out[k * P + p] = acc[k] * alpha;
    } else {
      for (int64_t k = 0; k < K; ++k) {
        float acc = 0.f;
        for (int r = 0; r <= D; ++r) acc += w[r] * grid[(vertex[r] + 1) * K + k];
        out[k * P + p] = acc * alpha;
      }
    }
  }
}

template <int D>
void slice(const Lattice<D>& lattice, const FilterArgs<D>& args) {
  const int64_t K = args.channels, P = args.points;
  const float* grid = lattice.grid_a.data();
  const int32_t* offset = lattice.offset.data();
  const float* weight = lattice.weight.data();
  at::parallel_for(0, P, 4096, [&](int64_t begin, int64_t end) {
    switch (K) {
      case 1: return slice_points<D, 1>(offset, weight, grid, P, K, args.alpha, args.out, begin, end);
      case 2: return slice_points<D, 2>(offset, weight, grid, P, K, args.alpha, args.out, begin, end);
      case 3: return slice_points<D, 3>(offset, weight, grid, P, K, args.alpha, args.out, begin, end);
      case 4: return slice_points<D, 4>(offset, weight, grid, P, K, args.alpha, args.out, begin, end);
      default: return slice_points<D, 0>(offset, weight, grid, P, K, args.alpha, args.out, begin, end);
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

// The calling thread's lattice memory, kept between calls: a fresh
// allocation of the per-point arrays (tens of MB for long clips) would be
// paid again in page faults on every call.
template <int D>
Lattice<D>& thread_lattice() {
  static thread_local Lattice<D> lattice;
  return lattice;
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

  auto filter_one = [&](Lattice<D>& lattice, int64_t n) {
    FilterArgs<D> args{V + n * K * P, F + n * D * P, O + n * K * P, K, P, reverse, scales, alpha};
    if (!filter_image<D>(lattice, args)) all_in_range = false;
  };
  const int64_t threads = at::get_num_threads();
  if (N >= threads && threads > 1 && !at::in_parallel_region()) {
    // One task per thread; each takes the next image until none is left.
    // Nested at::parallel_for calls run inline, so every phase of
    // filter_image is serial inside its image's thread.
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      Lattice<D>& lattice = thread_lattice<D>();
      for (int64_t task = begin; task < end; ++task) {
        for (int64_t n = next.fetch_add(1); n < N; n = next.fetch_add(1)) filter_one(lattice, n);
      }
    });
  } else {
    Lattice<D>& lattice = thread_lattice<D>();
    for (int64_t n = 0; n < N; ++n) filter_one(lattice, n);
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
