// CPU seed sampler of the stage-2 pseudo-labels: seed regions, draws without
// replacement and the ksz x ksz seed squares, one frame per task.
//
// The rule is tcam_ray/methods/pseudo_labels.py's (the TCAM reference code's),
// whose batched torch version serves CUDA tensors and stays the readable
// reference; the tests hold the two to the same regions and the same laws.
// A frame costs a few passes over its bytes (level histograms; the cut
// level's pixels, often stopping early; region flags, vectorised; the regions
// listed from the flags, eight at a time) plus O(draws) for the draws, instead
// of the dozen batch-wide tensor passes and one key per region pixel of the
// torch version: for CoLo-CAM's 1000 + 1000 seeds on 32 frames of 224x224,
// 2.9-4.1 ms on two cores against 22.7 ms there and 41 ms for the per-frame
// numpy reference (tcam-ray bench seeds).
//
// - Regions. Pixels are ranked by value (descending for the foreground, which
//   takes ROI pixels only; ascending for the background, the whole frame),
//   ties by flat index. The first floor(float32(max_p) * float32(|ROI|)) and
//   int(min_p * h * w) pixels (a constant frame: none). The level histograms
//   give the cut's level; its pixels are ordered (value, then index) to find
//   the cut pixel, and a pixel is in the region when it comes before the cut
//   pixel or is it.
// - Draws. Background: uniform, a partial Fisher-Yates shuffle of the listed
//   region. Foreground (weighted): proposals uniform over the region, each
//   accepted with probability weight / largest weight unless already drawn,
//   which is exactly successive sampling proportional to the weights; when
//   the proposals run out (most of the region drawn, or weights far below the
//   largest), the remaining draws take the smallest -log(u) / weight keys over
//   the pixels not yet drawn (Efraimidis and Spirakis): the same law. Weights
//   are the map value in [0, 1] plus 1e-8, as the reference's.
// - Randomness: one 64-bit seed per call (drawn from the caller's
//   torch.Generator); frame b's stream starts at a hash of (seed, b), so the
//   result does not depend on the thread count.
#include "seed_sampler.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace tcam_ray {
namespace seeds {
namespace {

constexpr int kLevels = 256;
constexpr float kWeightFloor = 1e-8f;
constexpr uint8_t kForegroundBit = 1;
constexpr uint8_t kBackgroundBit = 2;
constexpr int64_t kProposalsPerDraw = 8;
constexpr uint64_t kLowBits = 0x0101010101010101ULL;  // bit 0 of each byte of a word of eight flags or marks

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// SplitMix64: a frame's stream of 64-bit words.
class FrameRandom {
 public:
  FrameRandom(uint64_t seed, int64_t frame) : state_(mix64(seed ^ mix64(static_cast<uint64_t>(frame) + 1))) {}

  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ULL;
    return mix64(state_);
  }
  // Uniform in [0, n) (multiply-shift; bias n / 2^64).
  int64_t below(int64_t n) {
    return static_cast<int64_t>((static_cast<unsigned __int128>(next()) * static_cast<uint64_t>(n)) >> 64);
  }
  // Uniform in (0, 1]: -log of it is finite.
  double open_unit() { return (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

template <typename T>
int level_of(T value) {
  if constexpr (std::is_same_v<T, uint8_t>) {
    return value;
  } else {
    const float level = std::floor(value * 255.0f);
    return static_cast<int>(std::clamp(level, 0.0f, static_cast<float>(kLevels - 1)));
  }
}

template <typename T>
float weight_of(T value) {
  const float unit = std::is_same_v<T, uint8_t> ? static_cast<float>(value) / 255.0f : static_cast<float>(value);
  return std::clamp(unit, 0.0f, 1.0f) + kWeightFloor;
}

// A frame's level histograms: of all pixels and of the ROI's, and the ROI's highest level.
struct Levels {
  std::array<int64_t, kLevels> all{};
  std::array<int64_t, kLevels> in_roi{};
  bool contrast = false;  // not a constant map (the reference's cam.min() != cam.max())
  int top_roi_level = -1;
};

template <typename T>
Levels count_levels(const T* values, const bool* roi, int64_t pixels) {
  // Four interleaved tables of (level, in ROI) counts: consecutive pixels of one level do not wait on each
  // other's increment.
  std::array<std::array<uint32_t, 2 * kLevels>, 4> tables{};
  for (int64_t i = 0; i < pixels; ++i) ++tables[i & 3][level_of(values[i]) * 2 + roi[i]];
  Levels levels;
  int present = 0;
  for (int level = 0; level < kLevels; ++level) {
    for (const auto& table : tables) {
      levels.in_roi[level] += table[2 * level + 1];
      levels.all[level] += table[2 * level] + table[2 * level + 1];
    }
    present += levels.all[level] > 0;
    if (levels.in_roi[level] > 0) levels.top_roi_level = level;
  }
  if constexpr (std::is_same_v<T, uint8_t>) {
    levels.contrast = present > 1;
  } else {  // several values share a level
    const auto [low, high] = std::minmax_element(values, values + pixels);
    levels.contrast = *high > *low;
  }
  return levels;
}

// A region's cut pixel: the count-th candidate in the region's order (value, descending for the foreground,
// ascending for the background; then flat index). A pixel is in the region when it comes before the cut
// pixel in that order or is it. An empty region's cut admits nothing.
template <typename T>
struct Cut {
  T value;
  int64_t index = -1;
  int level = 0;
  int64_t rank = 0;  // the cut pixel's 1-based rank among the candidates of its level

  static Cut empty(bool descending) {
    Cut cut{descending ? std::numeric_limits<T>::max() : std::numeric_limits<T>::lowest()};
    if constexpr (std::is_floating_point_v<T>) {
      cut.value = descending ? std::numeric_limits<T>::infinity() : -std::numeric_limits<T>::infinity();
    }
    return cut;
  }
};

template <typename T>
Cut<T> cut_level(const std::array<int64_t, kLevels>& histogram, int64_t count, bool descending) {
  Cut<T> cut = Cut<T>::empty(descending);
  int64_t before = 0;
  for (int step = 0; step < kLevels && count > 0; ++step) {
    const int level = descending ? kLevels - 1 - step : step;
    if (before + histogram[level] >= count) {
      cut.level = level;
      cut.rank = count - before;
      return cut;
    }
    before += histogram[level];
  }
  return cut;  // count 0 (or more than the candidates, which p <= 1 rules out): empty
}

// Flat index of the rank-th (1-based) pixel of `level` (inside the ROI when given) in raster order: candidates
// are counted a block at a time (a loop the compiler vectorises), and only the block holding it is scanned.
int64_t nth_at_level(const uint8_t* __restrict__ values, const bool* __restrict__ roi, int64_t pixels, int level,
                     int64_t rank) {
  constexpr int64_t kSpan = 256;
  const auto* inside = reinterpret_cast<const uint8_t*>(roi);
  const auto target = static_cast<uint8_t>(level);
  int64_t seen = 0;
  for (int64_t begin = 0; begin < pixels; begin += kSpan) {
    const int64_t end = std::min(begin + kSpan, pixels);
    int count = 0;
    for (int64_t i = begin; i < end; ++i) count += (values[i] == target) & (inside ? inside[i] : 1);
    if (seen + count < rank) {
      seen += count;
      continue;
    }
    for (int64_t i = begin; i < end; ++i) {
      if (values[i] == target && (inside == nullptr || inside[i]) && ++seen == rank) return i;
    }
  }
  return -1;  // rank beyond the level's count: cannot happen for a cut found from the histogram
}

// Sets the cut pixel (value, index) of each region that is not empty. uint8 levels are single values, so the
// rank-th candidate of the level in raster order is the cut; float maps order the level's candidates by value
// first (one pass lists both levels' candidates).
template <typename T>
void find_cut_pixels(const T* values, const bool* roi, int64_t pixels, Cut<T>& fg, Cut<T>& bg) {
  const bool fg_open = fg.rank > 0, bg_open = bg.rank > 0;
  if constexpr (std::is_same_v<T, uint8_t>) {
    for (auto [cut, inside] : {std::pair{&fg, roi}, std::pair{&bg, static_cast<const bool*>(nullptr)}}) {
      if (cut->rank == 0) continue;
      cut->value = static_cast<T>(cut->level);
      cut->index = nth_at_level(values, inside, pixels, cut->level, cut->rank);
    }
  } else {
    std::vector<std::pair<T, int64_t>> fg_level, bg_level;
    for (int64_t i = 0; i < pixels; ++i) {
      const int level = level_of(values[i]);
      if (fg_open && roi[i] && level == fg.level) fg_level.emplace_back(values[i], i);
      if (bg_open && level == bg.level) bg_level.emplace_back(values[i], i);
    }
    const auto pick = [](std::vector<std::pair<T, int64_t>>& candidates, Cut<T>& cut, bool descending) {
      const auto rank = candidates.begin() + (cut.rank - 1);
      std::nth_element(candidates.begin(), rank, candidates.end(), [descending](const auto& a, const auto& b) {
        if (a.first != b.first) return descending ? a.first > b.first : a.first < b.first;
        return a.second < b.second;
      });
      cut.value = rank->first;
      cut.index = rank->second;
    };
    if (fg_open) pick(fg_level, fg, true);
    if (bg_open) pick(bg_level, bg, false);
  }
}

// Region flags of the pixels in [begin, end), where the ties at each cut value are all in (inclusive) or all
// out: a plain loop the compiler vectorises. Bit 0: foreground region, bit 1: background region.
template <typename T, bool kFgTies, bool kBgTies>
void flag_span(const T* __restrict__ values, const bool* __restrict__ roi, int64_t begin, int64_t end, T fg_value,
               T bg_value, uint8_t* __restrict__ flags) {
  const auto* inside = reinterpret_cast<const uint8_t*>(roi);  // bools are bytes of 0 or 1
  for (int64_t i = begin; i < end; ++i) {
    const T value = values[i];
    const uint8_t above = kFgTies ? value >= fg_value : value > fg_value;
    const uint8_t below = kBgTies ? value <= bg_value : value < bg_value;
    flags[i] = static_cast<uint8_t>((inside[i] & above) | (below << 1));
  }
}

// Flags every pixel: the pixels up to a cut pixel take that cut value's ties, the ones after it do not.
template <typename T>
void flag_regions(const T* values, const bool* roi, int64_t pixels, const Cut<T>& fg, const Cut<T>& bg,
                  uint8_t* flags) {
  const int64_t fg_end = fg.index + 1, bg_end = bg.index + 1;  // the spans that take the ties
  const int64_t first = std::min(fg_end, bg_end), second = std::max(fg_end, bg_end);
  flag_span<T, true, true>(values, roi, 0, first, fg.value, bg.value, flags);
  if (fg_end > bg_end) {
    flag_span<T, true, false>(values, roi, first, second, fg.value, bg.value, flags);
  } else {
    flag_span<T, false, true>(values, roi, first, second, fg.value, bg.value, flags);
  }
  flag_span<T, false, false>(values, roi, second, pixels, fg.value, bg.value, flags);
}

// Calls visit(base + k) for each byte lane k (0-7) of `lanes` that is not zero, in order.
template <typename Visit>
void for_each_lane(uint64_t lanes, int64_t base, Visit visit) {
  for (; lanes != 0; lanes &= lanes - 1) visit(base + (std::countr_zero(lanes) >> 3));
}

// The pixels of each region (flag bit 0: foreground, bit 1: background), in raster order, eight flags at a
// time (zero words skipped). Returns the two counts.
std::pair<int64_t, int64_t> list_regions(const uint8_t* flags, int64_t pixels, int32_t* fg, int32_t* bg) {
  int64_t fg_size = 0, bg_size = 0, i = 0;
  for (; i + 8 <= pixels; i += 8) {
    uint64_t word;
    std::memcpy(&word, flags + i, 8);
    if (word == 0) continue;
    for_each_lane(word & kLowBits, i, [&](int64_t pixel) { fg[fg_size++] = static_cast<int32_t>(pixel); });
    for_each_lane((word >> 1) & kLowBits, i, [&](int64_t pixel) { bg[bg_size++] = static_cast<int32_t>(pixel); });
  }
  for (; i < pixels; ++i) {
    if (flags[i] & kForegroundBit) fg[fg_size++] = static_cast<int32_t>(i);
    if (flags[i] & kBackgroundBit) bg[bg_size++] = static_cast<int32_t>(i);
  }
  return {fg_size, bg_size};
}

// Uniform draws without replacement: the first `draws` of a partial Fisher-Yates shuffle of the region.
void draw_uniform(int32_t* region, int64_t size, int64_t draws, FrameRandom& random, std::vector<int32_t>& out) {
  draws = std::min(draws, size);
  for (int64_t i = 0; i < draws; ++i) {
    std::swap(region[i], region[i + random.below(size - i)]);
    out.push_back(region[i]);
  }
}

// Weighted draws without replacement (successive sampling): accept-reject under the largest weight, then
// keys for the draws left.
template <typename T>
void draw_weighted(const T* values, const int32_t* region, int64_t size, int64_t draws, float largest,
                   FrameRandom& random, std::vector<uint8_t>& taken, std::vector<int32_t>& out) {
  draws = std::min(draws, size);
  if (draws == size) {
    out.insert(out.end(), region, region + size);
    return;
  }
  taken.assign(size, 0);
  int64_t drawn = 0;
  for (int64_t proposal = 0; drawn < draws && proposal < kProposalsPerDraw * draws; ++proposal) {
    const int64_t j = random.below(size);
    if (taken[j] || random.open_unit() * largest > weight_of(values[region[j]])) continue;
    taken[j] = 1;
    out.push_back(region[j]);
    ++drawn;
  }
  if (drawn == draws) return;
  std::vector<std::pair<double, int32_t>> keys;  // the pixels not drawn yet
  keys.reserve(size - drawn);
  for (int64_t j = 0; j < size; ++j) {
    if (!taken[j]) keys.emplace_back(-std::log(random.open_unit()) / weight_of(values[region[j]]), region[j]);
  }
  const auto last = keys.begin() + (draws - drawn);
  std::nth_element(keys.begin(), last - 1, keys.end());
  for (auto key = keys.begin(); key != last; ++key) out.push_back(key->second);
}

// Marks the ksz x ksz square (clipped to the frame) around each point with `bit`.
void mark_squares(const std::vector<int32_t>& points, uint8_t bit, int64_t height, int64_t width, int64_t ksz,
                  uint8_t* marks) {
  const int64_t half = ksz / 2;
  for (const int32_t point : points) {
    const int64_t y = point / width, x = point % width;
    const int64_t x0 = std::max<int64_t>(x - half, 0), x1 = std::min<int64_t>(x + half, width - 1);
    for (int64_t row = std::max<int64_t>(y - half, 0); row <= std::min<int64_t>(y + half, height - 1); ++row) {
      for (int64_t column = x0; column <= x1; ++column) marks[row * width + column] |= bit;
    }
  }
}

struct FrameSeeds {
  std::vector<int32_t> pixels;  // flat index in the frame, ascending
  std::vector<uint8_t> classes;  // 1 foreground, 0 background
};

// Calls emit(pixel, mark) for the pixels marked by one kind of square only (marks 01 or 10, not 11), in raster
// order, eight marks at a time (unmarked stretches cost one test per eight pixels).
template <typename Emit>
void for_each_seed(const uint8_t* marks, int64_t pixels, Emit emit) {
  int64_t i = 0;
  for (; i + 8 <= pixels; i += 8) {
    uint64_t word;
    std::memcpy(&word, marks + i, 8);
    for_each_lane((word ^ (word >> 1)) & kLowBits, i, [&](int64_t pixel) { emit(pixel, marks[pixel]); });
  }
  for (; i < pixels; ++i) {
    if (marks[i] == kForegroundBit || marks[i] == kBackgroundBit) emit(i, marks[i]);
  }
}

// Writes the label of each mark: none or both kinds of square, ignore_index; foreground 1; background 0. The
// label image is the largest thing the sampler writes (8 bytes a pixel): on x86 it is written with streaming
// stores, which do not first read every cache line they fill (the plain loop costs half again as much).
void paint_labels(const uint8_t* marks, int64_t pixels, int64_t ignore_index, int64_t* labels) {
  const std::array<int64_t, 4> label_of_mark{ignore_index, 1, 0, ignore_index};
  int64_t i = 0;
#if defined(__SSE2__)
  for (; i < pixels && reinterpret_cast<uintptr_t>(labels + i) % 16 != 0; ++i) labels[i] = label_of_mark[marks[i]];
  for (; i + 2 <= pixels; i += 2) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(labels + i),
                     _mm_set_epi64x(label_of_mark[marks[i + 1]], label_of_mark[marks[i]]));
  }
  _mm_sfence();
#endif
  for (; i < pixels; ++i) labels[i] = label_of_mark[marks[i]];
}

// Per-thread working arrays, kept between frames and calls.
struct Scratch {
  std::vector<int32_t> fg, bg;
  std::vector<uint8_t> flags, marks, taken;
  std::vector<int32_t> fg_points, bg_points;
};

// Marks a frame's seed squares in scratch.marks: kForegroundBit where a foreground square covers the pixel,
// kBackgroundBit where a background one does (both: both).
template <typename T>
void mark_frame(const T* values, const bool* roi, int64_t height, int64_t width, const SeedSettings& settings,
                FrameRandom& random, Scratch& scratch) {
  const int64_t pixels = height * width;
  scratch.marks.assign(pixels, 0);
  const Levels levels = count_levels(values, roi, pixels);
  if (!levels.contrast) return;  // a constant map carries no evidence
  const int64_t roi_count = std::accumulate(levels.in_roi.begin(), levels.in_roi.end(), int64_t{0});
  // The reference's counts: int(max_p * roi.sum()) in float32, int(min_p * h * w) in float64.
  const auto fg_count = static_cast<int64_t>(std::floor(static_cast<float>(settings.max_p) *
                                                        static_cast<float>(roi_count)));
  const auto bg_count = static_cast<int64_t>(settings.min_p * static_cast<double>(pixels));
  Cut<T> fg_cut = cut_level<T>(levels.in_roi, fg_count, true);
  Cut<T> bg_cut = cut_level<T>(levels.all, bg_count, false);
  find_cut_pixels(values, roi, pixels, fg_cut, bg_cut);

  scratch.flags.resize(pixels);
  flag_regions(values, roi, pixels, fg_cut, bg_cut, scratch.flags.data());
  scratch.fg.resize(pixels);
  scratch.bg.resize(pixels);
  const auto [fg_size, bg_size] = list_regions(scratch.flags.data(), pixels, scratch.fg.data(), scratch.bg.data());
  scratch.fg_points.clear();
  scratch.bg_points.clear();
  if (settings.weighted && fg_size > 0) {
    // Any bound on the weights keeps the law; this one is the ROI's highest level (+1 for float maps).
    const int bound_level = std::min(levels.top_roi_level + !std::is_same_v<T, uint8_t>, kLevels - 1);
    const float largest = static_cast<float>(std::max(bound_level, 1)) / 255.0f + kWeightFloor;
    draw_weighted(values, scratch.fg.data(), fg_size, settings.n_fg, largest, random, scratch.taken,
                  scratch.fg_points);
  } else {
    draw_uniform(scratch.fg.data(), fg_size, settings.n_fg, random, scratch.fg_points);
  }
  draw_uniform(scratch.bg.data(), bg_size, settings.n_bg, random, scratch.bg_points);
  mark_squares(scratch.fg_points, kForegroundBit, height, width, settings.ksz, scratch.marks.data());
  mark_squares(scratch.bg_points, kBackgroundBit, height, width, settings.ksz, scratch.marks.data());
}

// Calls use(frame, marks) with each frame's seed marks, frames split across threads.
template <typename T, typename Use>
void for_each_frame_marks(const at::Tensor& maps, const at::Tensor& roi, const SeedSettings& settings, Use use) {
  const int64_t frames = maps.size(0), height = maps.size(1), width = maps.size(2);
  const T* values = maps.data_ptr<T>();
  const bool* inside = roi.data_ptr<bool>();
  at::parallel_for(0, frames, 1, [&](int64_t begin, int64_t end) {
    thread_local Scratch scratch;
    for (int64_t frame = begin; frame < end; ++frame) {
      FrameRandom random(settings.seed, frame);
      const int64_t offset = frame * height * width;
      mark_frame(values + offset, inside + offset, height, width, settings, random, scratch);
      use(frame, scratch.marks.data());
    }
  });
}

template <typename Use>
void for_each_frame_marks(const at::Tensor& maps, const at::Tensor& roi, const SeedSettings& settings, Use use) {
  if (maps.scalar_type() == at::kByte) {
    for_each_frame_marks<uint8_t>(maps, roi, settings, use);
  } else {
    for_each_frame_marks<float>(maps, roi, settings, use);
  }
}

SeedSettings checked_settings(const at::Tensor& maps, const at::Tensor& roi, double max_p, double min_p,
                              int64_t n_fg, int64_t n_bg, int64_t ksz, bool weighted, int64_t seed) {
  TORCH_CHECK(maps.dim() == 3, "seed sampler: `maps` must have shape (B, h, w), got ", maps.sizes());
  TORCH_CHECK(roi.sizes() == maps.sizes() && roi.scalar_type() == at::kBool,
              "seed sampler: `roi` must be bool of the maps' shape ", maps.sizes(), ", got ", roi.scalar_type(), " ",
              roi.sizes());
  TORCH_CHECK(maps.scalar_type() == at::kByte || maps.scalar_type() == at::kFloat,
              "seed sampler: `maps` must be uint8 levels or float32, got ", maps.scalar_type());
  TORCH_CHECK(maps.device().is_cpu() && roi.device().is_cpu(), "seed sampler: this kernel takes CPU tensors");
  TORCH_CHECK(maps.is_contiguous() && roi.is_contiguous(), "seed sampler: `maps` and `roi` must be contiguous");
  TORCH_CHECK(ksz >= 1 && ksz % 2 == 1, "seed sampler: ksz must be a positive odd number, got ", ksz);
  TORCH_CHECK(maps.size(1) * maps.size(2) < (int64_t{1} << 31), "seed sampler: frames over 2^31 pixels");
  return {max_p, min_p, std::max<int64_t>(n_fg, 0), std::max<int64_t>(n_bg, 0), ksz, weighted,
          static_cast<uint64_t>(seed)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> seed_pixels_cpu(const at::Tensor& maps, const at::Tensor& roi, double max_p,
                                                    double min_p, int64_t n_fg, int64_t n_bg, int64_t ksz,
                                                    bool weighted, int64_t seed) {
  const SeedSettings settings = checked_settings(maps, roi, max_p, min_p, n_fg, n_bg, ksz, weighted, seed);
  std::vector<FrameSeeds> frames(maps.size(0));
  for_each_frame_marks(maps, roi, settings, [&frames, &maps](int64_t frame, const uint8_t* marks) {
    FrameSeeds& seeds = frames[frame];
    for_each_seed(marks, maps.size(1) * maps.size(2), [&seeds](int64_t pixel, uint8_t mark) {
      seeds.pixels.push_back(static_cast<int32_t>(pixel));
      seeds.classes.push_back(mark == kForegroundBit);
    });
  });
  std::vector<int64_t> first(frames.size() + 1, 0);  // where each frame's seeds start in the output
  for (size_t frame = 0; frame < frames.size(); ++frame) first[frame + 1] = first[frame] + frames[frame].pixels.size();
  at::Tensor pixels = at::empty({first.back()}, maps.options().dtype(at::kLong));
  at::Tensor classes = at::empty({first.back()}, maps.options().dtype(at::kLong));
  int64_t* pixel_out = pixels.data_ptr<int64_t>();
  int64_t* class_out = classes.data_ptr<int64_t>();
  const int64_t frame_size = maps.size(1) * maps.size(2);
  at::parallel_for(0, static_cast<int64_t>(frames.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t frame = begin; frame < end; ++frame) {
      const FrameSeeds& seeds = frames[frame];
      for (size_t i = 0; i < seeds.pixels.size(); ++i) {
        pixel_out[first[frame] + i] = frame * frame_size + seeds.pixels[i];
        class_out[first[frame] + i] = seeds.classes[i];
      }
    }
  });
  return {pixels, classes};
}

at::Tensor seed_labels_cpu(const at::Tensor& maps, const at::Tensor& roi, double max_p, double min_p, int64_t n_fg,
                           int64_t n_bg, int64_t ksz, bool weighted, int64_t seed, int64_t ignore_index) {
  const SeedSettings settings = checked_settings(maps, roi, max_p, min_p, n_fg, n_bg, ksz, weighted, seed);
  at::Tensor labels = at::empty(maps.sizes(), maps.options().dtype(at::kLong));
  int64_t* out = labels.data_ptr<int64_t>();
  const int64_t frame_size = maps.size(1) * maps.size(2);
  for_each_frame_marks(maps, roi, settings, [&](int64_t frame, const uint8_t* marks) {
    paint_labels(marks, frame_size, ignore_index, out + frame * frame_size);
  });
  return labels;
}

}  // namespace seeds
}  // namespace tcam_ray
