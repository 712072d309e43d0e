"""TCAM stage-2 pseudo-labels, batched in torch: CAM-TMP, Otsu ROI, foreground/background seeds.

Every step takes a whole batch of B frames on the maps' device (CPU or CUDA)
with no Python loop over frames or pixels; the only loops run over a small
fixed count (buffer entries, a few seeds per frame) or until the blob merge
converges.

The rule is the TCAM reference code's (sbelharbi/tcam-wsol-video,
`dlib/cams/tcam_seeding.py`: `GetRoiSingleCam`, `_SFG`, `_SBG`, `TCAMSeeder`);
tests/test_pseudo_labels.py holds it to the reference's own outputs
(tests/data/oracles/pseudo_labels) and to the per-frame numpy + OpenCV
version in tcam_ray/bench/seeds.py.

- **Inputs.** CAMs in [0, 1] (float), or uint8 levels (map = level / 255:
  the CAM store's format, which the training rows carry); uint8 buffers are
  pooled and thresholded as levels, never expanded to float. Invalid buffer
  entries are multiplied by 0 before the max, so they never win over a valid
  entry (the buffer builder zero-fills its padding).
- **Otsu.** On the levels `floor(255 * map)` (uint8 maps: the levels
  themselves), as scikit-image 0.17.2's `threshold_otsu` (which the
  reference pins): a 256-bin histogram over [min level, max level], the
  centre of the bin after which the between-class variance (float64) is
  first at its maximum. The threshold is in level units, usually not an
  integer (e.g. 87.158); a map of a single level has threshold 0.
- **ROI.** "all": every pixel with `255 * map >= threshold` (uint8: level >=
  threshold), small blobs included; so a threshold of 0 selects the whole
  frame. "largest": the 4-connected blob with most pixels. "densest": the
  blob of highest mean map value, or the largest blob when that one covers
  less than `min_size` of the frame. Ties go to the blob whose first pixel
  comes first in raster order.
- **Seed regions.** Pixels are ranked by map value, ties by flat index (the
  reference's stable sort). Foreground: the first `int(max_p * |ROI|)` ROI
  pixels in descending order; background: the first `int(min_p * h * w)`
  pixels of the whole frame in ascending order (the ROI is not taken out).
  A constant map (min == max) carries no evidence: empty regions.
- **Seeds.** `n_fg` foreground pixels drawn without replacement, with
  probability proportional to the map value (`weighted`) or uniformly;
  `n_bg` background pixels uniformly. A region smaller than the count gives
  all its pixels. Each seed is dilated by a `ksz` x `ksz` square (odd, clipped
  at the border); a pixel inside both a foreground and a background square is
  ignored (neither label is trusted there).

Speed: the histograms of the per-frame levels give Otsu, the ROI's level
counts and each region's cut level; only the pixels at the cut level are
listed (and, for float maps, ordered by value) to find the cut's exact pixel.
Blobs are found on horizontal runs (one nonzero over the batch), each run
linked to its first touching run in the rows above and below, then a
union-find with pointer jumping over the runs. Regions are never
materialised for sampling a few seeds: each draw proposes PROPOSALS uniform
pixels per frame and keeps the first one inside the region (accepted with
probability value / bound when weighted): exactly the successive-sampling law;
a frame with no accepted proposal falls back to an exact inverse-CDF draw.
Many seeds per frame (CoLo-CAM draws 1000) take one exponential key per
pixel instead (Efraimidis-Spirakis: the smallest `-log(u) / weight` keys are
a weighted draw without replacement) and one top-k. The seeds leave as a list
of pixels, not a label image.

On the CPU the seed regions, draws and squares run in the compiled sampler
instead (csrc/ops/seed_sampler_cpu.cpp: the same regions and laws, a frame
per thread task in a few passes over its bytes, about 10x faster than these
steps with 1000 + 1000 seeds); these steps serve CUDA tensors, and the tests
hold the two to each other (`COMPILED_CPU_SAMPLER = False` runs them on the
CPU).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tcam_ray.ops.seeds import seed_labels, seed_pixels

LEVELS = 256
PROPOSALS = 256  # rejection-sampling proposals per frame and draw
FEW_DRAWS = 16  # up to this many draws per frame, rejection sampling; more: one key per pixel and a top-k
WEIGHT_FLOOR = 1e-8  # the reference weighs foreground seeds by cam + 1e-8
COMPILED_CPU_SAMPLER = True  # CPU seeds from csrc/ops/seed_sampler_cpu.cpp; False: the torch steps (tests compare)
RoiMode = Literal["all", "largest", "densest"]
ROI_MODES: tuple[str, ...] = ("all", "largest", "densest")


@dataclass(frozen=True)
class PseudoLabels:
    """The step's result. Seeds are kept as pixel lists (what the self-learning loss reads) and laid out as a
    label image only when `seeds` is read."""

    maps: Tensor  # (B, h, w) CAM-TMP map (sharpened if asked): float32 in [0, 1], or uint8 levels
    roi: Tensor  # (B, h, w) bool
    thresholds: Tensor  # (B,) float64 Otsu threshold of `maps`, in 0-255 level units
    seed_pixels: Tensor  # (S,) int64 distinct flat batch indices (frame * h * w + y * w + x) of the seed pixels
    seed_classes: Tensor  # (S,) int64 label of each: 1 foreground, 0 background
    ignore_index: int = -100

    @property
    def pooled(self) -> Tensor:
        """(B, h, w) float32 CAM-TMP map in [0, 1]."""
        return _unit(self.maps)

    @functools.cached_property
    def seeds(self) -> Tensor:
        """(B, h, w) int64: 1 foreground, 0 background, ignore_index elsewhere."""
        return _label_image(self.seed_pixels, self.seed_classes, self.roi.shape, self.ignore_index)


# ----------------------------------------------------------------------------- CAM-TMP


def cam_tmp(buffer: Tensor, valid: Tensor, sharpen: float | None = None) -> Tensor:
    """(B, h, w) float32 pixel-wise max over each frame's valid buffer entries; optionally re-sharpened.

    `buffer` (B, T, h, w) holds a frame's CAM and its neighbours' CAMs (same
    shot); `valid` (B, T) bool marks the real entries (False: padding at shot
    edges). `sharpen=h` gives exp(h * cam) / max over pixels of exp(h * cam).
    """
    return _sharpened(_unit(_max_over_valid(buffer, valid)), sharpen)


def _max_over_valid(buffer: Tensor, valid: Tensor) -> Tensor:
    """(B, h, w) max over the valid entries, in the buffer's dtype."""
    if buffer.ndim != 4 or valid.shape != buffer.shape[:2] or valid.dtype != torch.bool:
        raise ValueError(f"cam_tmp wants buffer (B, T, h, w) and valid (B, T) bool, got {tuple(buffer.shape)}, "
                         f"{tuple(valid.shape)} {valid.dtype}")
    # Zeroing the padding (finite, zero-filled by the buffer builder) cannot beat a valid CAM >= 0. Exact in the
    # input dtype, so float16 and uint8 buffers are converted after the max, not before.
    keep = valid.to(buffer.dtype)[:, :, None, None]  # not bool: a broadcast bool operand is not vectorised
    pooled = buffer[:, 0] * keep[:, 0]
    for entry in range(1, buffer.shape[1]):  # T = 1 + number of neighbours: a handful
        torch.maximum(pooled, buffer[:, entry] * keep[:, entry], out=pooled)
    return pooled


def _sharpened(pooled: Tensor, sharpen: float | None) -> Tensor:
    if sharpen is None:
        return pooled
    scaled = pooled * float(sharpen)
    # exp(h*cam) / max exp(h*cam) == exp(h*cam - max(h*cam)), which cannot overflow.
    return torch.exp(scaled - scaled.amax(dim=(1, 2), keepdim=True))


def _unit(maps: Tensor) -> Tensor:
    """Map values as float32: uint8 levels / 255, other maps as they are."""
    return maps.float() / 255.0 if maps.dtype == torch.uint8 else maps.float()


# ----------------------------------------------------------------------------- levels and Otsu


def _bins(maps: Tensor) -> Tensor:
    """(B, h * w) int16 (int32 past 127 frames) histogram bin of every pixel: frame * 256 + floor(255 * map)
    (uint8: its level).

    The frame offset lets one bincount make every frame's histogram. The
    narrowest type that holds every bin and the spare one (`_histograms`)
    keeps this, the largest working tensor, small: on the CPU adding the
    offsets in int16 takes a tenth of the time it takes in int32.
    """
    frames = maps.shape[0]
    offsets = _frame_offsets(frames, maps.device).to(_bin_dtype(frames))[:, None]
    if maps.dtype == torch.uint8:  # already the levels
        return maps.reshape(frames, -1).to(offsets.dtype).add_(offsets)
    levels = (maps.reshape(frames, -1).float() * 255.0).floor_().clamp_(0.0, LEVELS - 1.0)
    return levels.to(offsets.dtype).add_(offsets)


def _bin_dtype(frames: int) -> torch.dtype:
    return torch.int16 if (frames + 1) * LEVELS <= torch.iinfo(torch.int16).max + 1 else torch.int32


def _frame_offsets(frames: int, device: torch.device) -> Tensor:
    return LEVELS * torch.arange(frames, device=device)


def _histograms(bins: Tensor, region: Tensor | None = None) -> Tensor:
    """(B, 256) int64 count of each level per frame, over the `region` pixels only when given."""
    frames = bins.shape[0]
    index = bins.reshape(-1)
    if region is not None:
        index = index.masked_fill(~region.reshape(-1), frames * LEVELS)  # a spare bin takes the rest
    return torch.bincount(index, minlength=frames * LEVELS + 1)[: frames * LEVELS].reshape(frames, LEVELS)


def otsu_levels(histograms: Tensor) -> Tensor:
    """(B,) float64 Otsu threshold, in level units, of each frame's level histogram (B, 256).

    scikit-image 0.17.2's threshold_otsu on the levels as a float image: 256
    bins over [lowest, highest] level present (bin edges lowest + i * span /
    256, exact in float32 as numpy computes them, so level L falls in bin
    floor(256 * (L - lowest) / span), the last bin closed), the variance in
    float64, the centre of the first maximising bin. 0 for a single level.
    """
    counts = histograms.double()
    level = torch.arange(LEVELS, device=counts.device)
    present = histograms > 0
    lowest = torch.where(present, level, LEVELS).amin(dim=1, keepdim=True)
    highest = torch.where(present, level, -1).amax(dim=1, keepdim=True)
    span = (highest - lowest).clamp_min(1)
    bin_of_level = torch.div((level - lowest).clamp_min(0) * LEVELS, span, rounding_mode="floor").clamp_max(LEVELS - 1)
    hist = torch.zeros_like(counts).scatter_add_(1, bin_of_level, counts)
    centres = lowest + (2 * level + 1) * span.double() / (2 * LEVELS)
    weighted = hist * centres
    weight1 = hist.cumsum(dim=1)
    weight2 = hist.flip(1).cumsum(dim=1).flip(1)
    mean1 = weighted.cumsum(dim=1) / weight1.clamp_min(1.0)
    mean2 = (weighted.flip(1).cumsum(dim=1) / weight2.flip(1).clamp_min(1.0)).flip(1)
    variance = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    threshold = centres.gather(1, variance.argmax(dim=1, keepdim=True)).squeeze(1)  # argmax: the first maximum
    return torch.where((highest > lowest).squeeze(1), threshold, 0.0)


def otsu_thresholds(maps: Tensor) -> Tensor:
    """(B,) float64 Otsu threshold of each (B, h, w) map, in 0-255 level units (see the module notes)."""
    _check_maps(maps)
    return otsu_levels(_histograms(_bins(maps)))


# ----------------------------------------------------------------------------- blobs


@dataclass(frozen=True)
class Runs:
    """Horizontal runs of foreground pixels of a batch, in raster order, and the blob of each."""

    row: Tensor  # (R,) int64 row in the batch: frame * h + y
    start: Tensor  # (R,) int64 first column
    end: Tensor  # (R,) int64 last column (inclusive)
    blob: Tensor  # (R,) int64 index of the first run of its 4-connected blob

    def pixels(self, selected: Tensor, width: int) -> Tensor:
        """Flat batch indices (frame * h * w + y * w + x) of every pixel of the selected runs."""
        first = (self.row * width + self.start)[selected]
        length = (self.end - self.start + 1)[selected]
        before = torch.cumsum(length, 0) - length
        total = int(length.sum())
        return torch.repeat_interleave(first - before, length, output_size=total) + torch.arange(
            total, device=first.device)


def foreground_runs(foreground: Tensor) -> Runs:
    """The runs of a (B, h, w) bool mask, merged into 4-connected blobs by a union-find over touching runs."""
    frames, height, width = foreground.shape
    padded = F.pad(foreground.reshape(-1, width), (1, 1))
    marks = _flat_bool(padded.shape[0] * (width + 1), padded.device)
    changes = marks[: padded.shape[0] * (width + 1)].view(-1, width + 1)
    torch.bitwise_xor(padded[:, 1:], padded[:, :-1], out=changes)  # each run's start and the column past its end
    bounds = _nonzero_flat(marks)
    row = torch.div(bounds[0::2], width + 1, rounding_mode="floor")
    start = bounds[0::2] - row * (width + 1)
    end = bounds[1::2] - row * (width + 1) - 1
    touching = _first_touching_runs(row, start, end, frames, height, width)
    return Runs(row, start, end, _union_find(touching))


def _flat_bool(length: int, device: torch.device) -> Tensor:
    """A bool buffer of `length` rounded up to whole 8-byte words (for _nonzero_flat), for the caller to fill;
    only the padding past `length` is zeroed."""
    buffer = torch.empty(-(-length // 8) * 8, dtype=torch.bool, device=device)
    buffer[length:] = False
    return buffer


def _nonzero_flat(mask: Tensor) -> Tensor:
    """Sorted indices of the True entries of a flat, word-aligned bool buffer.

    Scans 8 booleans per int64 word first, then only the words holding a
    True: a sparse mask costs an eighth of a plain nonzero.
    """
    words = mask.view(torch.int64)
    hit_words = words.nonzero().squeeze(1)
    hit_bytes = words.index_select(0, hit_words).view(torch.uint8).view(-1, 8).nonzero()
    return hit_words.index_select(0, hit_bytes[:, 0]) * 8 + hit_bytes[:, 1]


def _first_touching_runs(row: Tensor, start: Tensor, end: Tensor, frames: int, height: int, width: int) -> Tensor:
    """(2, R): each run's first touching run in the next row, then in the previous row (itself if none).

    Runs of adjacent rows touch (4-connectivity, as the reference's
    skimage.measure.label(connectivity=1)) when their column spans overlap.
    These links join the same blobs as all the touching pairs: if U and D
    touched without either being the other's first, U's first D' (left of D)
    and D's first U' (left of U) would force
    D.start <= U'.end < U.start <= D'.end < D.start.
    """
    count = row.numel()
    itself = torch.arange(count, device=row.device)
    if count == 0:
        return itself.expand(2, 0)
    rows = frames * height
    runs_in_row = torch.bincount(row, minlength=rows)
    row_first = torch.cumsum(runs_in_row, 0) - runs_in_row
    # Each row's run ends side by side, padded with `width`: a row holds few runs, so counting the ends before a
    # column is a short comparison instead of a binary search.
    ends = torch.full((rows, int(runs_in_row.max()) + 1), width, dtype=torch.long, device=row.device)
    ends[row, itself - row_first.index_select(0, row)] = end
    y = row % height
    other_row = torch.stack([row + 1, row - 1])
    has_other = torch.stack([y < height - 1, y > 0])
    other_safe = other_row.clamp_(0, rows - 1).reshape(-1)
    ending_before = (ends.index_select(0, other_safe).reshape(2, count, -1) < start[None, :, None]).sum(dim=2)
    first = row_first.index_select(0, other_safe).reshape(2, count) + ending_before
    exists = has_other & (ending_before < runs_in_row.index_select(0, other_safe).reshape(2, count))
    first = torch.where(exists, first, itself)  # the only candidate: the first run there ending >= start
    touches = exists & (start.index_select(0, first.reshape(-1)).reshape(2, count) <= end)
    return torch.where(touches, first, itself)


def _union_find(targets: Tensor) -> Tensor:
    """(R,) smallest node of each node's component, for the undirected links (i, targets[k, i])."""
    count = targets.shape[1]
    parent = torch.arange(count, device=targets.device)
    left, right = parent.repeat(targets.shape[0]), targets.reshape(-1)
    while True:  # every pass hooks at least one root onto a smaller one: at most R passes
        root_left, root_right = parent.index_select(0, left), parent.index_select(0, right)
        still_open = (root_left != root_right).nonzero().squeeze(1)
        if still_open.numel() == 0:
            return parent
        left, right = left.index_select(0, still_open), right.index_select(0, still_open)
        root_left, root_right = root_left.index_select(0, still_open), root_right.index_select(0, still_open)
        parent.scatter_reduce_(0, torch.maximum(root_left, root_right), torch.minimum(root_left, root_right), "amin")
        parent = _compress(parent)


def _compress(parent: Tensor) -> Tensor:
    """Pointer jumping until every node points at its root (two jumps per check: a check costs a sync)."""
    while True:
        grandparent = parent.index_select(0, parent)
        great_grandparent = grandparent.index_select(0, grandparent)
        if not bool((great_grandparent != grandparent).any()):
            return great_grandparent
        parent = great_grandparent


def connected_components(foreground: Tensor) -> Tensor:
    """(B, h, w) int64 4-connected blob labels: 0 off the mask, 1, 2, ... per frame in raster order of first pixel."""
    frames, height, width = foreground.shape
    runs = foreground_runs(foreground)
    is_first = (runs.blob == torch.arange(runs.row.numel(), device=foreground.device)).long()
    blobs_before = torch.cumsum(is_first, 0) - is_first
    frame = runs.row // height
    first_of_frame = torch.zeros(frames, dtype=torch.long, device=foreground.device)
    first_of_frame.scatter_reduce_(0, frame, blobs_before, "amin", include_self=False)
    number = blobs_before[runs.blob] - first_of_frame[frame] + 1
    labels = torch.zeros(frames * height * width, dtype=torch.long, device=foreground.device)
    everything = torch.ones_like(runs.row, dtype=torch.bool)
    labels[runs.pixels(everything, width)] = torch.repeat_interleave(number, runs.end - runs.start + 1)
    return labels.reshape(frames, height, width)


# ----------------------------------------------------------------------------- ROI


def roi_masks(maps: Tensor, thresholds: Tensor, mode: RoiMode = "all", min_size: float = 0.05) -> Tensor:
    """(B, h, w) bool ROI of maps (B, h, w) at their Otsu thresholds (B,) in level units (`otsu_thresholds`).

    "all": every pixel with 255 * map >= threshold; "largest": its largest
    4-connected blob; "densest": the blob of highest mean map value, or the
    largest when that one covers less than min_size of the frame.
    """
    _check_maps(maps)
    roi, _ = _roi(_foreground(maps, thresholds), maps, mode, min_size)
    return roi


def _foreground(maps: Tensor, thresholds: Tensor) -> Tensor:
    """(B, h, w) bool: 255 * map >= threshold, compared in float32 as the reference (uint8 maps: level >= it)."""
    if maps.dtype == torch.uint8:
        return _levels_at_least(maps, thresholds.ceil().long()[:, None, None])
    return maps.float() * 255.0 >= thresholds.float()[:, None, None]


# On the CPU, comparisons that write bool are not vectorised: 1.5-2.5 ms for a batch of 32 frames of 224x224
# against 0.1-0.2 ms for the same test in uint8 arithmetic, whose 0/1 result is then viewed as bool.

def _levels_at_least(levels: Tensor, level: Tensor) -> Tensor:
    """bool: uint8 `levels` >= integer `level` (broadcast; at most 0: every level passes, above 255: none)."""
    step = (level - 1).clamp(0, LEVELS - 1).to(torch.uint8)
    passed = torch.maximum(levels, step).sub_(step).clamp_max_(1)  # 1 where level - 1 < value
    return passed.bitwise_or_((level <= 0).to(torch.uint8)).view(torch.bool)


def _levels_equal(levels: Tensor, level: Tensor, out: Tensor | None = None) -> Tensor:
    """bool: uint8 `levels` == uint8 `level` (broadcast), into the bool tensor `out` when given."""
    differ = torch.bitwise_xor(levels, level, out=None if out is None else out.view(torch.uint8))
    return differ.clamp_max_(1).bitwise_xor_(1).view(torch.bool)


def _roi(foreground: Tensor, maps: Tensor, mode: str, min_size: float) -> tuple[Tensor, Tensor]:
    """The ROI and the flat batch indices of the foreground pixels it dropped."""
    if mode not in ROI_MODES:
        raise ValueError(f"unknown ROI mode {mode!r}; known: {', '.join(ROI_MODES)}")
    nothing = torch.zeros(0, dtype=torch.long, device=foreground.device)
    if mode == "all":
        return foreground, nothing
    frames, height, width = foreground.shape
    runs = foreground_runs(foreground)
    if runs.row.numel() == 0:
        return foreground, nothing
    dropped = ~_kept_blobs(runs, maps, mode, min_size * height * width, frames, height).index_select(0, runs.blob)
    if not bool(dropped.any()):
        return foreground, nothing
    dropped_pixels = runs.pixels(dropped, width)
    roi = foreground.clone()
    roi.view(-1).index_fill_(0, dropped_pixels, False)
    return roi, dropped_pixels


def _kept_blobs(runs: Runs, maps: Tensor, mode: str, min_area: float, frames: int, height: int) -> Tensor:
    """(R,) bool over run indices: True at the first run of the kept blob of each frame."""
    count = runs.row.numel()
    is_first = runs.blob == torch.arange(count, device=runs.row.device)
    frame = runs.row // height
    area = torch.zeros(count, dtype=torch.float64, device=runs.row.device)
    area.index_add_(0, runs.blob, (runs.end - runs.start + 1).double())
    largest = _first_best_per_frame(area, is_first, frame, frames)
    if mode == "largest":
        return _flags(largest, count)
    densest = _first_best_per_frame(_blob_sums(runs, maps, count) / area.clamp_min(1.0), is_first, frame, frames)
    small = area.index_select(0, densest.clamp_max(count - 1)) < min_area
    return _flags(torch.where(small, largest, densest), count)


def _blob_sums(runs: Runs, maps: Tensor, count: int) -> Tensor:
    """(R,) float64 sum of the map over each blob, at its first run."""
    width = maps.shape[-1]
    prefix = F.pad(_unit(maps).reshape(-1, width).double().cumsum(dim=1), (1, 0))
    run_sum = prefix[runs.row, runs.end + 1] - prefix[runs.row, runs.start]
    return torch.zeros(count, dtype=torch.float64, device=maps.device).index_add_(0, runs.blob, run_sum)


def _first_best_per_frame(score: Tensor, candidate: Tensor, frame: Tensor, frames: int) -> Tensor:
    """(B,) index of each frame's highest-scoring candidate (smallest index on ties); R when it has none."""
    count = score.numel()
    masked = torch.where(candidate, score, float("-inf"))
    best = torch.full((frames,), float("-inf"), dtype=score.dtype, device=score.device)
    best.scatter_reduce_(0, frame, masked, "amax")
    winners = torch.where(candidate & (masked == best[frame]), torch.arange(count, device=score.device), count)
    first = torch.full((frames,), count, dtype=torch.long, device=score.device)
    return first.scatter_reduce_(0, frame, winners, "amin")


def _flags(chosen: Tensor, count: int) -> Tensor:
    flags = torch.zeros(count + 1, dtype=torch.bool, device=chosen.device)
    flags[chosen] = True
    return flags[:count]


# ----------------------------------------------------------------------------- seed regions


@dataclass(frozen=True)
class SeedRegion:
    """Frame b's region: its pixels (inside the ROI when `roi` is given) up to the cut pixel, in the order of
    map value (descending for the foreground, ascending for the background), then flat index."""

    values: Tensor  # (B, N) the map (uint8 levels or float32), flat
    roi: Tensor | None  # (B, N) bool, or None: the whole frame
    descending: bool
    cut_value: Tensor  # (B,) value of the cut pixel, in the dtype of `values` (empty region: nothing passes it)
    cut_index: Tensor  # (B,) int64 flat index of the cut pixel in its frame; -1: empty region
    ties: Tensor  # (T,) flat batch indices of the region's pixels of the cut pixel's level
    bound: Tensor  # (B,) float32 upper bound of the region's map values in [0, 1] (weighted acceptance)

    def contains(self, pixels: Tensor) -> Tensor:
        """(B, K) bool: is pixels[b, k] in frame b's region."""
        values = self.values.gather(1, pixels)
        inside = self._before(values, self.cut_value[:, None])
        inside |= (values == self.cut_value[:, None]) & (pixels <= self.cut_index[:, None])
        return inside & self.roi.gather(1, pixels) if self.roi is not None else inside

    def masks(self, frames: Tensor | None = None) -> Tensor:
        """(F, N) bool region of each frame in `frames` (F,), default all: the pixels before the cut's level
        (value, for float maps), then the listed ties."""
        inside = self._before(self.values, self.cut_value[:, None])
        if self.roi is not None:
            inside &= self.roi
        inside.view(-1).index_fill_(0, self.ties, True)
        return inside if frames is None else inside.index_select(0, frames)

    def _before(self, values: Tensor, cut: Tensor) -> Tensor:
        if values.dtype == torch.uint8:
            cut = cut.long()
            return _levels_at_least(values, cut + 1) if self.descending else ~_levels_at_least(values, cut)
        return values > cut if self.descending else values < cut


def seed_regions(maps: Tensor, roi: Tensor, max_p: float = 0.6, min_p: float = 0.1) -> tuple[Tensor, Tensor]:
    """(foreground, background) (B, h, w) bool: the pixels seeds are drawn from (see the module notes)."""
    _check_maps(maps)
    bins = _bins(maps)
    histograms = _histograms(bins)
    foreground, background = _seed_regions(maps, bins, histograms, _histograms(bins, roi), roi, max_p, min_p)
    return foreground.masks().reshape(roi.shape), background.masks().reshape(roi.shape)


def _seed_regions(maps: Tensor, bins: Tensor, histograms: Tensor, roi_histograms: Tensor, roi: Tensor,
                  max_p: float, min_p: float) -> tuple[SeedRegion, SeedRegion]:
    frames = maps.shape[0]
    values = maps.reshape(frames, -1)
    contrast = _has_contrast(values, histograms)
    # The reference's counts: int(max_p * roi.sum()) computed in float32 (a tensor), int(min_p * h * w) in float64.
    in_roi = roi_histograms.sum(dim=1)
    fg_count = torch.where(contrast, (torch.tensor(max_p, dtype=torch.float32) * in_roi.float()).floor().long(), 0)
    bg_count = torch.where(contrast, int(min_p * values.shape[1]), 0)
    top_level = LEVELS - 1 - (roi_histograms.flip(1).cumsum(dim=1) == 0).sum(dim=1)
    bound = ((top_level + (values.dtype != torch.uint8)).clamp(1, LEVELS - 1) / 255.0).float()
    foreground = _region(values, bins, roi_histograms.flip(1), roi.reshape(frames, -1), fg_count, True, bound)
    background = _region(values, bins, histograms, None, bg_count, False, torch.ones_like(bound))
    return foreground, background


def _has_contrast(values: Tensor, histograms: Tensor) -> Tensor:
    """(B,) bool: the map is not constant (the reference's cam.min() != cam.max())."""
    if values.dtype == torch.uint8:
        return (histograms > 0).sum(dim=1) > 1
    low, high = torch.aminmax(values, dim=1)
    return high > low


def _region(values: Tensor, bins: Tensor, ordered_histograms: Tensor, roi: Tensor | None, count: Tensor,
            descending: bool, bound: Tensor) -> SeedRegion:
    """The first `count` (B,) pixels of each frame in the region's order. ordered_histograms (B, 256): the
    level counts of the candidate pixels from the first level in that order (the highest when descending)."""
    running = ordered_histograms.cumsum(dim=1)
    steps = (running < count[:, None]).sum(dim=1).clamp_max(LEVELS - 1)  # levels wholly before the cut pixel
    before = torch.where(steps > 0, running.gather(1, (steps - 1).clamp_min(0)[:, None]).squeeze(1), 0)
    cut_level = LEVELS - 1 - steps if descending else steps
    cut_value, cut_index, ties = _cut_pixel(values, bins, roi, cut_level, count - before, descending)
    return SeedRegion(values, roi, descending, cut_value, cut_index, ties, bound)


def _cut_pixel(values: Tensor, bins: Tensor, roi: Tensor | None, cut_level: Tensor, rank: Tensor,
               descending: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(value, flat index in its frame) of each frame's rank-th (1-based) candidate pixel of level cut_level
    in the order of value, then index (index -1 and a value nothing passes where there is none), and the flat
    batch indices of the candidates of that level up to it. Only the pixels of that level are listed: a few
    hundred per frame."""
    frames, pixels = values.shape
    device = values.device
    at_cut = _flat_bool(values.numel(), device)
    at_cut_frames = at_cut[: values.numel()].view(frames, pixels)
    if values.dtype == torch.uint8:  # a quarter of the bytes of `bins`
        _levels_equal(values, cut_level.to(torch.uint8)[:, None], out=at_cut_frames)
    else:
        torch.eq(bins, (cut_level + _frame_offsets(frames, device)).to(bins.dtype)[:, None], out=at_cut_frames)
    if roi is not None:
        at_cut_frames &= roi
    listed = _nonzero_flat(at_cut)  # ascending: by frame, then index
    if values.dtype != torch.uint8:  # a level holds several values: order by value, ties by index, then by frame
        listed = listed.index_select(0, torch.sort(values.reshape(-1).index_select(0, listed),
                                                   descending=descending, stable=True).indices)
        listed = listed.index_select(0, torch.sort(torch.div(listed, pixels, rounding_mode="floor"),
                                                   stable=True).indices)
    frame = torch.div(listed, pixels, rounding_mode="floor")
    per_frame = torch.bincount(frame, minlength=frames)
    first = torch.cumsum(per_frame, 0) - per_frame
    usable = (rank >= 1) & (rank <= per_frame)
    chosen = torch.cat([listed, listed.new_zeros(1)]).index_select(
        0, torch.where(usable, first + rank - 1, 0).clamp_max(listed.numel()))
    index = torch.where(usable, chosen - torch.arange(frames, device=device) * pixels, -1)
    beyond = torch.tensor(_extreme(values.dtype, descending), dtype=values.dtype, device=device)
    value = torch.where(usable, values.reshape(-1).index_select(0, chosen), beyond)
    in_region = torch.arange(listed.numel(), device=device) - first.index_select(0, frame) < \
        torch.where(usable, rank, 0).index_select(0, frame)
    return value, index, listed[in_region]


def _extreme(dtype: torch.dtype, descending: bool) -> float:
    """The value no map value comes before in the region's order (an empty region's cut)."""
    if dtype == torch.uint8:
        return LEVELS - 1.0 if descending else 0.0
    return float("inf") if descending else float("-inf")


# ----------------------------------------------------------------------------- seeds


def sample_seeds(
    maps: Tensor,
    roi: Tensor,
    max_p: float = 0.6,
    min_p: float = 0.1,
    n_fg: int = 1,
    n_bg: int = 1,
    ksz: int = 3,
    weighted: bool = True,
    generator: torch.Generator | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """(B, h, w) int64 seeds: 1 on dilated foreground seeds, 0 on dilated background ones, ignore_index elsewhere."""
    _check_maps(maps)
    _check_ksz(ksz)
    if _compiled_sampler(maps):
        return seed_labels(maps, roi, max_p, min_p, n_fg, n_bg, ksz, weighted, generator, ignore_index)
    bins = _bins(maps)
    pixels, classes = _batched_seed_pixels(maps, roi, bins, _histograms(bins), _histograms(bins, roi), max_p, min_p,
                                           n_fg, n_bg, ksz, weighted, generator)
    return _label_image(pixels, classes, roi.shape, ignore_index)


def _compiled_sampler(maps: Tensor) -> bool:
    """CPU tensors take the compiled sampler (csrc/ops/seed_sampler_cpu.cpp: the same regions and laws, each
    frame in a few passes over its pixels); the others this module's batched steps."""
    return maps.device.type == "cpu" and maps.dtype in (torch.uint8, torch.float32) and COMPILED_CPU_SAMPLER


def _batched_seed_pixels(maps: Tensor, roi: Tensor, bins: Tensor, histograms: Tensor, roi_histograms: Tensor,
                         max_p: float, min_p: float, n_fg: int, n_bg: int, ksz: int, weighted: bool,
                         generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(pixels, classes) of the seeds (see `_seed_pixels`) by this module's batched steps."""
    regions = _seed_regions(maps, bins, histograms, roi_histograms, roi, max_p, min_p)
    fg_points, bg_points = _draw_points(maps, regions, n_fg, n_bg, weighted, generator)
    return _seed_pixels(fg_points, bg_points, roi.shape, ksz)


def _draw_points(maps: Tensor, regions: tuple[SeedRegion, SeedRegion], n_fg: int, n_bg: int, weighted: bool,
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(B, n_fg) foreground and (B, n_bg) background seed pixels (flat in the frame; -1: none)."""
    foreground, background = regions
    weights = maps.reshape(maps.shape[0], -1) if weighted else None
    return _draw(foreground, weights, n_fg, generator), _draw(background, None, n_bg, generator)


def _draw(region: SeedRegion, weights: Tensor | None, draws: int, generator: torch.Generator | None) -> Tensor:
    """(B, min(draws, h * w)) pixels drawn without replacement in each frame's region (weighted or uniform);
    -1: none left."""
    if draws > FEW_DRAWS:
        return _draw_by_keys(region, weights, draws, generator)
    frames, pixels = region.values.shape
    device = region.values.device
    chosen = torch.full((frames, draws), -1, dtype=torch.long, device=device)
    for draw in range(draws):  # a few seeds per frame
        proposals = torch.randint(pixels, (frames, PROPOSALS), generator=generator, device=device)
        accepted = region.contains(proposals)
        accepted &= (proposals[:, :, None] != chosen[:, None, :draw]).all(dim=2)
        if weights is not None:
            coin = torch.rand(proposals.shape, generator=generator, device=device)
            accepted &= coin * region.bound[:, None] < _seed_weights(weights.gather(1, proposals))
        first = accepted.byte().argmax(dim=1, keepdim=True)
        chosen[:, draw] = torch.where(accepted.any(dim=1), proposals.gather(1, first).squeeze(1), -1)
        missed = (chosen[:, draw] < 0).nonzero().squeeze(1)
        if missed.numel():
            chosen[missed, draw] = _exact_draw(region, weights, missed, chosen[missed, :draw], generator)
    return chosen


def _draw_by_keys(region: SeedRegion, weights: Tensor | None, draws: int, generator: torch.Generator | None
                  ) -> Tensor:
    """Many draws at once: the `draws` smallest keys -log(u) / weight among each frame's region pixels
    (Efraimidis and Spirakis 2006: the law of successive draws without replacement; keys u when uniform).
    The region's pixels are listed first, so keys are drawn for them only."""
    frames, pixels = region.values.shape
    device = region.values.device
    listed = region.masks().reshape(-1).nonzero().squeeze(1)  # regions are dense: a plain nonzero
    keys = torch.rand(listed.shape, generator=generator, device=device)
    if weights is not None:
        keys = keys.log_().neg_().div_(_seed_weights(weights.reshape(-1).index_select(0, listed)))
    frame = torch.div(listed, pixels, rounding_mode="floor")
    counts = torch.bincount(frame, minlength=frames)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(listed.numel(), device=device) - first.index_select(0, frame)
    widest = max(int(counts.max()), 1)
    table = torch.full((frames * widest,), float("inf"), device=device)
    table.index_copy_(0, frame * widest + slot, keys)
    table = table.view(frames, widest)
    smallest, column = torch.topk(table, min(draws, widest), dim=1, largest=False, sorted=False)
    chosen = torch.cat([listed, listed.new_zeros(1)]).index_select(
        0, (first[:, None] + column).clamp_max(listed.numel()).reshape(-1)).reshape(column.shape)
    offsets = torch.arange(frames, device=device)[:, None] * pixels
    return torch.where(torch.isfinite(smallest), chosen - offsets, -1)


def _seed_weights(values: Tensor) -> Tensor:
    """Draw weights of map values: the value plus the reference's 1e-8, so a zero-valued pixel stays drawable."""
    return _unit(values).clamp(0.0, 1.0) + WEIGHT_FLOOR


def _exact_draw(region: SeedRegion, weights: Tensor | None, frames: Tensor, taken: Tensor,
                generator: torch.Generator | None) -> Tensor:
    """(F,) one pixel per listed frame by inverse CDF over its materialised region minus `taken`; -1 if empty."""
    mask = F.pad(region.masks(frames), (0, 1))  # a spare last column absorbs the -1 entries of `taken`
    mask.scatter_(1, torch.where(taken >= 0, taken, mask.shape[1] - 1), False)
    mask = mask[:, :-1]
    if weights is None:
        running = mask.cumsum(dim=1, dtype=torch.int32)
        total = running[:, -1:]
        uniform = torch.rand(total.shape, generator=generator, device=mask.device, dtype=torch.float64)
        rank = torch.minimum((uniform * total).long(), (total - 1).clamp_min(0)).to(torch.int32)
        pixel = torch.searchsorted(running, rank + 1)  # the (rank + 1)-th pixel of the region
    else:
        running = torch.where(mask, _seed_weights(weights[frames]), 0.0).cumsum(dim=1)
        total = running[:, -1:].contiguous()
        uniform = torch.rand(total.shape, generator=generator, device=mask.device)
        pixel = torch.searchsorted(running, uniform * total, right=True)
        pixel = torch.minimum(pixel, torch.searchsorted(running, total))  # rand * total may round up to total
    return torch.where(total > 0, pixel.clamp_max(mask.shape[1] - 1), -1).squeeze(1)


def _seed_pixels(fg_points: Tensor, bg_points: Tensor, shape: torch.Size, ksz: int) -> tuple[Tensor, Tensor]:
    """(pixels, classes): the flat batch indices, ascending, of the pixels inside a foreground square (class 1)
    or a background square (class 0) but not both."""
    if fg_points.shape[1] + bg_points.shape[1] > 2 * FEW_DRAWS:  # many squares: a mask beats sorting their pixels
        squares = _dilated(fg_points, bg_points, shape, ksz).reshape(-1)  # bit 0: foreground, bit 1: background
        one_class = torch.bitwise_xor(squares, squares >> 1).bitwise_and_(1)  # 1 for the bits 01 and 10 only
        pixels = one_class.view(torch.bool).nonzero().squeeze(1)
        return pixels, squares.index_select(0, pixels).bitwise_and_(FOREGROUND_BIT).long()
    _, height, width = shape
    # One sort for both: pixel * 2 + class, distinct; a pixel left with both classes is dropped.
    keys = torch.unique(torch.cat([_squares(fg_points, ksz, height, width) * 2 + 1,
                                   _squares(bg_points, ksz, height, width) * 2]))
    pixels = keys // 2
    same_as_next = pixels[1:] == pixels[:-1]
    in_both = torch.zeros_like(pixels, dtype=torch.bool)
    in_both[1:] |= same_as_next
    in_both[:-1] |= same_as_next
    return pixels[~in_both], (keys % 2)[~in_both]


FOREGROUND_BIT, BACKGROUND_BIT = 1, 2


def _dilated(fg_points: Tensor, bg_points: Tensor, shape: torch.Size, ksz: int) -> Tensor:
    """(B, h, w) uint8: FOREGROUND_BIT where a foreground square covers the pixel, BACKGROUND_BIT where a
    background one does (both bits: both); squares are ksz x ksz, clipped to the frame; points (B, K), -1: none."""
    frames, height, width = shape
    marks = torch.zeros(frames * height * width + 1, dtype=torch.uint8, device=fg_points.device)
    offsets = torch.arange(frames, device=fg_points.device)[:, None] * (height * width)
    for points, bit in ((fg_points, FOREGROUND_BIT), (bg_points, BACKGROUND_BIT)):
        flat = torch.where(points >= 0, points + offsets, marks.numel() - 1).reshape(-1)
        marks.index_put_((flat,), torch.tensor(bit, dtype=torch.uint8, device=marks.device), accumulate=True)
    squares = marks[:-1].reshape(shape)  # points are distinct within a class, so the sums are bitwise ors
    for axis in (2, 1):  # a square is a row segment of column segments
        grown = squares.clone()
        for shift in range(1, ksz // 2 + 1):
            size = squares.shape[axis] - shift
            grown.narrow(axis, shift, size).bitwise_or_(squares.narrow(axis, 0, size))
            grown.narrow(axis, 0, size).bitwise_or_(squares.narrow(axis, shift, size))
        squares = grown
    return squares


def _label_image(pixels: Tensor, classes: Tensor, shape: torch.Size, ignore_index: int) -> Tensor:
    """(B, h, w) int64 with `classes` at `pixels` and ignore_index elsewhere."""
    seeds = torch.full((shape.numel(),), ignore_index, dtype=torch.long, device=pixels.device)
    seeds[pixels] = classes
    return seeds.reshape(shape)


def _squares(points: Tensor, ksz: int, height: int, width: int) -> Tensor:
    """Flat batch indices of the ksz x ksz squares (clipped to the frame) around the drawn points."""
    offsets = torch.arange(-(ksz // 2), ksz // 2 + 1, device=points.device)
    y = (points // width)[..., None, None] + offsets[:, None]
    x = (points % width)[..., None, None] + offsets[None, :]
    inside = (points >= 0)[..., None, None] & (y >= 0) & (y < height) & (x >= 0) & (x < width)
    frame = torch.arange(points.shape[0], device=points.device)[:, None, None, None]
    return (frame * height * width + y * width + x)[inside]


# ----------------------------------------------------------------------------- the whole step


def pseudo_labels(
    buffer: Tensor,
    valid: Tensor,
    *,
    sharpen: float | None = None,
    roi_mode: RoiMode = "all",
    min_size: float = 0.05,
    max_p: float = 0.6,
    min_p: float = 0.1,
    n_fg: int = 1,
    n_bg: int = 1,
    ksz: int = 3,
    weighted: bool = True,
    generator: torch.Generator | None = None,
    ignore_index: int = -100,
) -> PseudoLabels:
    """CAM-TMP -> Otsu -> ROI -> seeds for a batch of neighbour-frame CAM buffers (B, T, h, w), float in
    [0, 1] or uint8 levels.

    Defaults are the TCAM paper's: ROI all, max_p 0.6, min_p 0.1, one
    weighted foreground and one background seed, ksz 3 (min_size 0.05 serves
    the densest ROI only).
    """
    _check_ksz(ksz)
    maps = _max_over_valid(buffer, valid)
    if maps.dtype != torch.uint8 or sharpen is not None:
        maps = _sharpened(_unit(maps), sharpen)
    bins = _bins(maps)
    histograms = _histograms(bins)
    thresholds = otsu_levels(histograms)
    roi, dropped = _roi(_foreground(maps, thresholds), maps, roi_mode, min_size)
    if _compiled_sampler(maps):
        pixels, classes = seed_pixels(maps, roi, max_p, min_p, n_fg, n_bg, ksz, weighted, generator)
    else:
        roi_histograms = _roi_histograms(maps, bins, histograms, thresholds, roi, dropped)
        pixels, classes = _batched_seed_pixels(maps, roi, bins, histograms, roi_histograms, max_p, min_p, n_fg, n_bg,
                                               ksz, weighted, generator)
    return PseudoLabels(maps=maps, roi=roi, thresholds=thresholds, seed_pixels=pixels, seed_classes=classes,
                        ignore_index=ignore_index)


def _roi_histograms(maps: Tensor, bins: Tensor, histograms: Tensor, thresholds: Tensor, roi: Tensor,
                    dropped: Tensor) -> Tensor:
    """Level histograms of the ROI. uint8 maps, whose foreground is whole levels: the levels at or above the
    threshold less the dropped blobs' pixels (no pass over the frame); float maps: counted."""
    if maps.dtype != torch.uint8:
        return _histograms(bins, roi)
    above = torch.arange(LEVELS, device=histograms.device) >= thresholds.ceil()[:, None]
    roi_histograms = histograms * above
    if dropped.numel():
        frames = histograms.shape[0]
        dropped_bins = bins.reshape(-1).index_select(0, dropped)
        roi_histograms -= torch.bincount(dropped_bins, minlength=frames * LEVELS).reshape(frames, LEVELS)
    return roi_histograms


def _check_maps(maps: Tensor) -> None:
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, h, w), got shape {tuple(maps.shape)}")


def _check_ksz(ksz: int) -> None:
    if ksz < 1 or ksz % 2 == 0:
        raise ValueError(f"ksz must be a positive odd number, got {ksz}")
