"""TCAM stage-2 pseudo-labels, batched in torch: CAM-TMP, Otsu ROI, foreground/background seeds.

Every step takes a whole batch of B frames on the maps' device (CPU or CUDA)
with no Python loop over frames or pixels; the only loops run over a small
fixed count (buffer entries, seeds per frame) or until the blob merge
converges. The math runs in float32 whatever the input dtype.

Conventions (deliberate; tests/test_pseudo_labels.py checks them against the
per-frame numpy + OpenCV reference in tcam_ray/bench/seeds.py):

- **Inputs.** CAMs are in [0, 1], or uint8 levels (map = level / 255: the
  CAM store's format, which the training rows carry); uint8 buffers are
  pooled and thresholded as levels, never expanded to float (a quarter of the
  memory traffic; sharpening works in float). Invalid buffer entries are
  multiplied by 0 before the max, so they never win over a valid entry (they
  must be finite: the buffer builder zero-fills its padding); a frame with no
  valid entry pools to zeros.
- **Levels.** Otsu, the ROI and the seed quantiles work on the 0-255 levels
  `round(255 * clamp(map, 0, 1))` (float32, round half to even).
- **Otsu.** `otsu_thresholds` returns `t / 255`, `t` being OpenCV's Otsu
  threshold on those levels: the highest level of the background class (first
  maximum of the between-class variance). A single-level map (constant,
  all-zero) has no split; its threshold is 0, as in OpenCV.
- **ROI.** Foreground pixels are those whose level *exceeds* the threshold's
  level: exactly what `cv2.threshold(..., THRESH_OTSU)` binarises. (`>=` on
  `t / 255` would add level `t`, the top of the background class, and on a
  two-level map {0, x}, whose threshold is 0, would select the whole frame.)
  Blobs are 8-connected; a blob passes the size test when
  `area >= min_size * h * w`. When none passes (modes "all" and "densest"),
  the largest blob is kept, so the ROI is empty only when no level exceeds
  the threshold: an all-zero map (or one whose pixels are all under 0.5/255).
  A constant positive map is one blob, the whole frame. Ties (equal areas in
  "largest", equal means in "densest") go to the blob whose first pixel comes
  first in raster order.
- **Seed regions.** Foreground: the ROI pixels at or above the level of the
  n-th highest ROI level, n = max(1, floor(max_p * |ROI|)). Background: the
  pixels at or below the level of the n-th lowest level of the whole frame,
  n = max(1, floor(min_p * h * w)), *minus the ROI*. Pixels tied with the
  cut-off level are all in (ranking tied pixels by position would be
  arbitrary), so a region holds its fraction plus at most the rest of one
  level. A single-level frame carries no evidence: empty regions, no seeds
  (the paper's code does the same).
- **Seeds.** `n_fg` foreground pixels are drawn without replacement, with
  probability proportional to the map value (`weighted`; successive draws)
  or uniformly; `n_bg` background pixels uniformly. A region smaller than the
  count gives all its pixels. Each seed is dilated by a `ksz` x `ksz` square
  (odd `ksz`, clipped at the border). Dilated background never labels a ROI
  pixel, and a pixel inside both a foreground and a background square is
  ignored (the paper's rule): neither label is trusted there.

Speed: blobs are found on horizontal runs (one nonzero over the batch), each
run linked to its first touching run in the rows above and below, then a
union-find with pointer jumping over the runs. The ROI histogram that the
foreground cut needs is the Otsu histogram above the threshold less the
dropped blobs' pixels. The regions are never materialised for sampling. Each draw proposes
PROPOSALS uniform pixels per frame and keeps the first one inside the region
(accepted with probability value / bound when weighted): exactly the
successive-sampling law. A frame with no accepted proposal (a tiny region)
falls back to an exact inverse-CDF draw over its materialised region. The
seeds leave as a list of pixels (a few hundred per batch), not a label image.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LEVELS = 256
PROPOSALS = 256  # rejection-sampling proposals per frame and draw
RoiMode = Literal["all", "largest", "densest"]
ROI_MODES: tuple[str, ...] = ("all", "largest", "densest")


@dataclass(frozen=True)
class PseudoLabels:
    """The step's result. Seeds are a few hundred pixels of a batch: they are kept as pixel lists (what the
    self-learning loss reads) and laid out as a label image only when `seeds` is read."""

    maps: Tensor  # (B, h, w) CAM-TMP map (sharpened if asked): float32 in [0, 1], or uint8 levels
    roi: Tensor  # (B, h, w) bool
    thresholds: Tensor  # (B,) float32: Otsu threshold of `pooled`, in [0, 1] units
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
    pooled = buffer[:, 0] * valid[:, 0, None, None]
    for entry in range(1, buffer.shape[1]):  # T = 1 + number of neighbours: a handful
        torch.maximum(pooled, buffer[:, entry] * valid[:, entry, None, None], out=pooled)
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


# ----------------------------------------------------------------------------- Otsu


def _bins(maps: Tensor) -> Tensor:
    """(B, h * w) int32 histogram bin of every pixel: frame * 256 + round(255 * clamp(map, 0, 1)).

    The frame offset lets one bincount make every frame's histogram, and the
    per-frame cuts are compared with it shifted by the same offset; int32
    keeps this, the largest working tensor, at the size of the map.
    """
    frames = maps.shape[0]
    if maps.dtype == torch.uint8:  # already the levels
        offsets = _frame_offsets(frames, maps.device).to(torch.int32)
        return maps.reshape(frames, -1).to(torch.int32).add_(offsets[:, None])
    scaled = (maps.reshape(frames, -1).float() * 255.0).clamp_(0.0, 255.0).round_()
    scaled += _frame_offsets(frames, maps.device).float()[:, None]
    return scaled.to(torch.int32)


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
    """(B,) int64 Otsu threshold level of each histogram: OpenCV's, the top level of the background class."""
    counts = histograms.double()
    level = torch.arange(LEVELS, dtype=torch.float64, device=counts.device)
    below = counts.cumsum(dim=1)  # pixels at or under each candidate threshold
    above = below[:, -1:] - below
    sum_below = (counts * level).cumsum(dim=1)
    sum_above = sum_below[:, -1:] - sum_below
    mean_gap = sum_below / below.clamp_min(1.0) - sum_above / above.clamp_min(1.0)
    between = torch.where((below > 0) & (above > 0), below * above * mean_gap.square(), -1.0)
    return between.argmax(dim=1)  # the first maximum; a single-level histogram gives 0


def otsu_thresholds(maps: Tensor) -> Tensor:
    """(B,) float32 Otsu threshold of each (B, h, w) map, found on the 0-255 scale and returned as t / 255."""
    _check_maps(maps)
    return _level_to_unit(otsu_levels(_histograms(_bins(maps))))


def _level_to_unit(levels: Tensor) -> Tensor:
    """levels / 255 as float32, rounded the same on every device (CUDA divides by a scalar via its reciprocal)."""
    return (levels.double() / 255.0).float()


# ----------------------------------------------------------------------------- blobs


@dataclass(frozen=True)
class Runs:
    """Horizontal runs of foreground pixels of a batch, in raster order, and the blob of each."""

    row: Tensor  # (R,) int64 row in the batch: frame * h + y
    start: Tensor  # (R,) int64 first column
    end: Tensor  # (R,) int64 last column (inclusive)
    blob: Tensor  # (R,) int64 index of the first run of its 8-connected blob

    def pixels(self, selected: Tensor, width: int) -> Tensor:
        """Flat batch indices (frame * h * w + y * w + x) of every pixel of the selected runs."""
        first = (self.row * width + self.start)[selected]
        length = (self.end - self.start + 1)[selected]
        before = torch.cumsum(length, 0) - length
        total = int(length.sum())
        return torch.repeat_interleave(first - before, length, output_size=total) + torch.arange(
            total, device=first.device)


def foreground_runs(foreground: Tensor) -> Runs:
    """The runs of a (B, h, w) bool mask, merged into 8-connected blobs by a union-find over touching runs."""
    frames, height, width = foreground.shape
    padded = F.pad(foreground.reshape(-1, width), (1, 1))
    marks = _flat_bool(padded.shape[0] * (width + 1), padded.device)
    changes = marks[: padded.shape[0] * (width + 1)].view(-1, width + 1)
    torch.ne(padded[:, 1:], padded[:, :-1], out=changes)  # marks each run's start and the column past its end
    bounds = _nonzero_flat(marks)
    row = torch.div(bounds[0::2], width + 1, rounding_mode="floor")
    start = bounds[0::2] - row * (width + 1)
    end = bounds[1::2] - row * (width + 1) - 1
    touching = _first_touching_runs(row, start, end, frames, height, width)
    return Runs(row, start, end, _union_find(touching))


def _flat_bool(length: int, device: torch.device) -> Tensor:
    """A zeroed bool buffer of `length` rounded up to whole 8-byte words (for _nonzero_flat)."""
    return torch.zeros(-(-length // 8) * 8, dtype=torch.bool, device=device)


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

    Runs of adjacent rows touch (8-connectivity) when their column spans
    overlap once widened by one. These links join the same blobs as all the
    touching pairs: if U and D touched without either being the other's first,
    U's first D' (left of D) and D's first U' (left of U) would force
    D.start <= U'.end + 1 < U.start <= D'.end + 1 < D.start.
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
    ending_before = (ends.index_select(0, other_safe).reshape(2, count, -1) < (start - 1)[None, :, None]).sum(dim=2)
    first = row_first.index_select(0, other_safe).reshape(2, count) + ending_before
    exists = has_other & (ending_before < runs_in_row.index_select(0, other_safe).reshape(2, count))
    first = torch.where(exists, first, itself)  # the only candidate: the first run there ending >= start - 1
    touches = exists & (start.index_select(0, first.reshape(-1)).reshape(2, count) <= end + 1)
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
    """(B, h, w) int64 8-connected blob labels: 0 off the mask, 1, 2, ... per frame in raster order of first pixel."""
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
    """(B, h, w) bool ROI: blobs of the pixels whose level exceeds the threshold's, chosen by `mode`.

    "all": every blob with area >= min_size * h * w; "largest": the largest
    blob; "densest": the highest mean map value among the blobs passing
    min_size. With no blob passing min_size, the largest blob is kept.
    """
    _check_maps(maps)
    threshold_levels = (thresholds.float() * 255.0).round().long()
    roi, _ = _roi(_foreground(_bins(maps), threshold_levels, maps.shape), maps, mode, min_size)
    return roi


def _foreground(bins: Tensor, threshold_levels: Tensor, shape: torch.Size, maps: Tensor | None = None) -> Tensor:
    """(B, h, w) bool: pixels whose level exceeds their frame's threshold level (read from uint8 level maps
    when given: a quarter of the bytes of `bins`)."""
    if maps is not None and maps.dtype == torch.uint8:
        return maps > threshold_levels.to(torch.uint8)[:, None, None]
    cut = (threshold_levels + _frame_offsets(bins.shape[0], bins.device)).to(torch.int32)
    return (bins > cut[:, None]).reshape(shape)


def _roi(foreground: Tensor, maps: Tensor, mode: str, min_size: float) -> tuple[Tensor, Tensor]:
    """The ROI and the flat batch indices of the foreground pixels it dropped."""
    if mode not in ROI_MODES:
        raise ValueError(f"unknown ROI mode {mode!r}; known: {', '.join(ROI_MODES)}")
    frames, height, width = foreground.shape
    runs = foreground_runs(foreground)
    nothing = torch.zeros(0, dtype=torch.long, device=foreground.device)
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
    """(R,) bool over run indices: True at the first run of every kept blob."""
    count = runs.row.numel()
    device = runs.row.device
    is_first = runs.blob == torch.arange(count, device=device)
    frame = runs.row // height
    area = torch.zeros(count, dtype=torch.float64, device=device)
    area.index_add_(0, runs.blob, (runs.end - runs.start + 1).double())
    large_enough = is_first & (area >= min_area)
    largest = _first_best_per_frame(area, is_first, frame, frames)
    if mode == "largest":
        return _flags(largest, count)
    if mode == "all":
        large_in_frame = torch.zeros(frames, dtype=torch.long, device=device).index_add_(0, frame, large_enough.long())
        return large_enough | (_flags(largest, count) & (large_in_frame[frame] == 0))
    mean = _blob_sums(runs, maps, count) / area.clamp_min(1.0)
    densest = _first_best_per_frame(mean, large_enough, frame, frames)
    return _flags(torch.where(densest < count, densest, largest), count)


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
    """Pixels p of frame b with roi[b, p] == inside_roi and low[b] <= level[b, p] <= high[b]."""

    bins: Tensor  # (B, N) int32: frame * 256 + level
    roi: Tensor  # (B, N) bool
    inside_roi: bool
    low: Tensor  # (B,) int64 level
    high: Tensor  # (B,) int64 level
    top: Tensor  # (B,) int64 highest level present in the region (-1 if none): bounds its map values

    def contains(self, pixels: Tensor) -> Tensor:
        """(B, K) bool: is pixels[b, k] in frame b's region."""
        low, high = self._bin_bounds()
        bins = self.bins.gather(1, pixels)
        return (self.roi.gather(1, pixels) == self.inside_roi) & (bins >= low[:, None]) & (bins <= high[:, None])

    def masks(self, frames: Tensor) -> Tensor:
        """(F, N) bool region of each frame in `frames` (F,)."""
        low, high = (bound.index_select(0, frames)[:, None] for bound in self._bin_bounds())
        bins = self.bins.index_select(0, frames)
        return (self.roi.index_select(0, frames) == self.inside_roi) & (bins >= low) & (bins <= high)

    def _bin_bounds(self) -> tuple[Tensor, Tensor]:
        offsets = _frame_offsets(self.bins.shape[0], self.bins.device)
        return (self.low + offsets).to(torch.int32), (self.high + offsets).to(torch.int32)


def seed_regions(maps: Tensor, roi: Tensor, max_p: float = 0.6, min_p: float = 0.1) -> tuple[Tensor, Tensor]:
    """(foreground, background) (B, h, w) bool: the pixels seeds are drawn from (see the module notes)."""
    _check_maps(maps)
    foreground, background = _regions_of(maps, roi, max_p, min_p)
    everything = torch.arange(maps.shape[0], device=maps.device)
    return foreground.masks(everything).reshape(roi.shape), background.masks(everything).reshape(roi.shape)


def _regions_of(maps: Tensor, roi: Tensor, max_p: float, min_p: float) -> tuple[SeedRegion, SeedRegion]:
    bins = _bins(maps)
    return _seed_regions(bins, _histograms(bins), _histograms(bins, roi), roi, max_p, min_p)


def _seed_regions(bins: Tensor, histograms: Tensor, roi_histograms: Tensor, roi: Tensor, max_p: float,
                  min_p: float) -> tuple[SeedRegion, SeedRegion]:
    frames = bins.shape[0]
    has_contrast = (histograms > 0).sum(dim=1) > 1
    top_count = _quantile_count(max_p, roi_histograms.sum(dim=1))
    steps_down = (roi_histograms.flip(1).cumsum(dim=1) < top_count[:, None]).sum(dim=1)
    foreground_low = torch.where(has_contrast & (top_count > 0), LEVELS - 1 - steps_down, LEVELS)
    bottom_count = _quantile_count(min_p, histograms.sum(dim=1))
    steps_up = (histograms.cumsum(dim=1) < bottom_count[:, None]).sum(dim=1)
    background_high = torch.where(has_contrast & (bottom_count > 0), steps_up, -1)
    roi_top = LEVELS - 1 - (roi_histograms.flip(1).cumsum(dim=1) == 0).sum(dim=1)
    foreground_top = torch.where(foreground_low < LEVELS, roi_top, -1)
    flat_roi = roi.reshape(frames, -1)
    foreground = SeedRegion(bins, flat_roi, True, foreground_low, torch.full_like(foreground_low, LEVELS - 1),
                            foreground_top)
    background = SeedRegion(bins, flat_roi, False, torch.zeros_like(background_high), background_high,
                            background_high)
    return foreground, background


def _quantile_count(fraction: float, population: Tensor) -> Tensor:
    """floor(fraction * population), at least 1 when both are positive."""
    count = torch.floor(fraction * population.double()).long()
    return torch.where((population > 0) & (fraction > 0), count.clamp_min(1), 0)


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
    fg_points, bg_points = _draw_points(maps, _regions_of(maps, roi, max_p, min_p), n_fg, n_bg, weighted, generator)
    return _label_image(*_seed_pixels(fg_points, bg_points, roi, ksz), roi.shape, ignore_index)


def _draw_points(maps: Tensor, regions: tuple[SeedRegion, SeedRegion], n_fg: int, n_bg: int, weighted: bool,
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(B, n_fg) foreground and (B, n_bg) background seed pixels (flat in the frame; -1: none)."""
    foreground, background = regions
    weights = maps.reshape(maps.shape[0], -1) if weighted else None
    return _draw(foreground, weights, n_fg, generator), _draw(background, None, n_bg, generator)


def _seed_pixels(fg_points: Tensor, bg_points: Tensor, roi: Tensor, ksz: int) -> tuple[Tensor, Tensor]:
    """(pixels, classes): the distinct flat batch indices of the foreground squares (class 1) and of the
    background ones (class 0) outside the ROI, less the pixels both cover."""
    _, height, width = roi.shape
    fg_squares = _squares(fg_points, ksz, height, width)
    bg_squares = _squares(bg_points, ksz, height, width)
    bg_squares = bg_squares[~roi.reshape(-1)[bg_squares]]
    # One sort for both: pixel * 2 + class, distinct; a pixel left with both classes is dropped.
    keys = torch.unique(torch.cat([fg_squares * 2 + 1, bg_squares * 2]))
    pixels = keys // 2
    same_as_next = pixels[1:] == pixels[:-1]
    in_both = torch.zeros_like(pixels, dtype=torch.bool)
    in_both[1:] |= same_as_next
    in_both[:-1] |= same_as_next
    return pixels[~in_both], (keys % 2)[~in_both]


def _label_image(pixels: Tensor, classes: Tensor, shape: torch.Size, ignore_index: int) -> Tensor:
    """(B, h, w) int64 with `classes` at `pixels` and ignore_index elsewhere."""
    seeds = torch.full((shape.numel(),), ignore_index, dtype=torch.long, device=pixels.device)
    seeds[pixels] = classes
    return seeds.reshape(shape)


def _draw(region: SeedRegion, weights: Tensor | None, draws: int, generator: torch.Generator | None) -> Tensor:
    """(B, draws) pixels drawn without replacement in each frame's region (weighted or uniform); -1: none left."""
    frames, pixels = region.bins.shape
    device = region.bins.device
    bound = ((region.top + 0.5) / 255.0).clamp(1e-6, 1.0)  # a level-L pixel is at most (L + 0.5) / 255
    chosen = torch.full((frames, draws), -1, dtype=torch.long, device=device)
    for draw in range(draws):  # a few seeds per frame
        proposals = torch.randint(pixels, (frames, PROPOSALS), generator=generator, device=device)
        accepted = region.contains(proposals)
        accepted &= (proposals[:, :, None] != chosen[:, None, :draw]).all(dim=2)
        if weights is not None:
            coin = torch.rand(proposals.shape, generator=generator, device=device)
            accepted &= coin * bound[:, None] < _unit(weights.gather(1, proposals)).clamp_(0.0, 1.0)
        first = accepted.byte().argmax(dim=1, keepdim=True)
        chosen[:, draw] = torch.where(accepted.any(dim=1), proposals.gather(1, first).squeeze(1), -1)
        missed = (chosen[:, draw] < 0).nonzero().squeeze(1)
        if missed.numel():
            chosen[missed, draw] = _exact_draw(region, weights, missed, chosen[missed, :draw], generator)
    return chosen


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
        running = torch.where(mask, _unit(weights[frames]).clamp(0.0, 1.0), 0.0).cumsum(dim=1)
        total = running[:, -1:].contiguous()
        uniform = torch.rand(total.shape, generator=generator, device=mask.device)
        pixel = torch.searchsorted(running, uniform * total, right=True)
        pixel = torch.minimum(pixel, torch.searchsorted(running, total))  # rand * total may round up to total
    return torch.where(total > 0, pixel.clamp_max(mask.shape[1] - 1), -1).squeeze(1)


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

    Defaults are the paper's: ROI all with min size 0.05, max_p 0.6, min_p 0.1,
    one weighted foreground and one background seed, ksz 3.
    """
    _check_ksz(ksz)
    maps = _max_over_valid(buffer, valid)
    if maps.dtype != torch.uint8 or sharpen is not None:
        maps = _sharpened(_unit(maps), sharpen)
    roi, threshold_levels, fg_points, bg_points = _roi_and_points(maps, roi_mode, min_size, max_p, min_p, n_fg,
                                                                  n_bg, weighted, generator)
    pixels, classes = _seed_pixels(fg_points, bg_points, roi, ksz)
    return PseudoLabels(maps=maps, roi=roi, thresholds=_level_to_unit(threshold_levels), seed_pixels=pixels,
                        seed_classes=classes, ignore_index=ignore_index)


def _roi_and_points(maps: Tensor, roi_mode: str, min_size: float, max_p: float, min_p: float, n_fg: int,
                    n_bg: int, weighted: bool, generator: torch.Generator | None):
    bins = _bins(maps)
    histograms = _histograms(bins)
    threshold_levels = otsu_levels(histograms)
    roi, dropped = _roi(_foreground(bins, threshold_levels, maps.shape, maps), maps, roi_mode, min_size)
    roi_histograms = _roi_histograms(histograms, threshold_levels, bins, dropped)
    regions = _seed_regions(bins, histograms, roi_histograms, roi, max_p, min_p)
    fg_points, bg_points = _draw_points(maps, regions, n_fg, n_bg, weighted, generator)
    return roi, threshold_levels, fg_points, bg_points


def _roi_histograms(histograms: Tensor, threshold_levels: Tensor, bins: Tensor, dropped: Tensor) -> Tensor:
    """Level histograms of the ROI: the foreground's (levels above the threshold) less the dropped blobs'."""
    above = torch.arange(LEVELS, device=histograms.device) > threshold_levels[:, None]
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
