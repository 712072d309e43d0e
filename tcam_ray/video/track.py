"""Boxes along a shot: candidate boxes per frame, a Viterbi track through them, a temporal average
of the track's boxes, and box jitter.

Per frame the candidates are the boxes of the largest contours of the map at the
box threshold and at two neighbouring thresholds (`candidate_levels`), candidate 0
being the frame's own box (the evaluation's rule: the largest contour at the
threshold). Each candidate's score is its fidelity to that box: IoU with it (1
for the box itself).

1. `viterbi_track` picks one candidate per frame maximising, over a run of frames,

       sum_t fidelity(c_t) - sum_t w(dt_t) * (1 - IoU(c_{t-1}, c_t)),
       w(dt) = weight * exp(-dt / memory_s),

   dt being the time between the two frames (a variable or low frame rate
   couples frames by how far apart they are in time, not by index). Leaving the
   frame's own box and changing box between frames are both paid in 1 - IoU,
   the currency of jitter and CorLoc, bounded and independent of frame size and
   aspect ratio; weight 1 weighs them alike. A frame whose own box jumps to
   another blob for a frame or two (an outlier) then gets the candidate on the
   blob its neighbours hold, when the map has one there.
2. `temporal_average`: each coordinate of the chosen boxes is averaged over the
   run with Gaussian weights exp(-dt^2 / (2 sigma_s^2)) of the time between the
   frames (centred, so steady motion does not lag). What is left of the
   frame-to-frame jitter is mostly the map's blob breathing by a few pixels,
   which no single candidate avoids.

Runs never cross a scene cut (the shots) nor a frame without a box (the object
judged absent, or no contour): a gap restarts the track instead of forcing a box
through it. The defaults (video.smooth_weight 1, smooth_memory_s 0.5,
smooth_sigma_s 0.1) are in units that hold for any video: memory 0.5 s couples
frames 1/25 s apart at 0.92 and frames a second apart at 0.14 (in a second an
object's box can change entirely); sigma 0.1 s is about the time over which
vision integrates (Bloch's law), so the average removes change faster than a
viewer follows and keeps what they see move. Neither was tuned on a data set:
`tcam-ray bench track` measures what they do.

Choosing the candidate of most map mass instead of fidelity (the share of the
map's mass inside the box minus the share of the frame it covers) cut jitter
more but moved CorLoc by -6 points on the demo's val split and +6 on test: it
changes which box a frame gets regardless of its neighbours, so it was dropped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.boxes import EVAL_SIZE, contour_boxes, eval_map, find_contours, threshold_levels

LEVEL_STEP = 0.1  # the neighbouring thresholds: threshold -/+ this
PER_LEVEL = 2  # the largest contours kept at each threshold
MAX_CANDIDATES = 3 * PER_LEVEL


# --------------------------------------------------------------------------- candidates


def candidate_levels(threshold: float) -> list[float]:
    """The box threshold first, then its neighbours that lie in [0, 1)."""
    return [threshold] + [t for t in (threshold - LEVEL_STEP, threshold + LEVEL_STEP) if 0 <= t < 1]


def grid_candidates(cam: np.ndarray, threshold: float, protocol: str) -> np.ndarray:
    """(k, 4) inclusive boxes in the evaluation's 224 grid, k <= MAX_CANDIDATES, without repeats:
    first the evaluation's box (largest contour at `threshold`), then the PER_LEVEL largest contours
    at each candidate level. Empty when the map has no contour at `threshold`."""
    u8 = eval_map(cam, protocol)
    found: list[np.ndarray] = []
    for index, level in enumerate(threshold_levels(candidate_levels(threshold), int(u8.max())).tolist()):
        contours = find_contours(u8, level)
        if not contours:
            if index == 0:
                return np.zeros((0, 4), np.int64)
            continue
        boxes, twice_areas = contour_boxes(contours)
        found.append(boxes[np.argsort(-twice_areas, kind="stable")[:PER_LEVEL]])
    return first_unique(np.concatenate(found))


def first_unique(boxes: np.ndarray) -> np.ndarray:
    """The rows of `boxes` (n, 4) without repeats, in their first order."""
    if len(boxes) == 0:
        return boxes
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def grid_to_map_pixels(boxes: np.ndarray, map_size: tuple[int, int]) -> np.ndarray:
    """Inclusive 224-grid boxes (..., 4) as exclusive-end boxes in whole map pixels, at least one pixel
    wide and high (predict_boxes' edges, rounded to the map's pixels)."""
    width, height = map_size
    scale = np.array([width, height, width, height], np.float64) / EVAL_SIZE
    edges = np.rint((np.asarray(boxes, np.float64) + np.array([0, 0, 1, 1])) * scale).astype(np.int64)
    x0, y0 = np.minimum(edges[..., 0], width - 1), np.minimum(edges[..., 1], height - 1)
    return np.stack([x0, y0, np.maximum(edges[..., 2], x0 + 1), np.maximum(edges[..., 3], y0 + 1)], axis=-1)


def map_candidates(maps: np.ndarray, threshold: float, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of a batch of maps (B, h, w): boxes (B, MAX_CANDIDATES, 4) in map pixels (exclusive
    ends, no two alike) and valid (B, MAX_CANDIDATES); candidate 0 is the evaluation's box where valid[:, 0]."""
    batch, height, width = maps.shape
    boxes = np.zeros((batch, MAX_CANDIDATES, 4), np.int64)
    valid = np.zeros((batch, MAX_CANDIDATES), bool)
    for i, cam in enumerate(maps):
        pixels = first_unique(grid_to_map_pixels(grid_candidates(cam, threshold, protocol), (width, height)))
        boxes[i, :len(pixels)] = pixels
        valid[i, :len(pixels)] = True
    return boxes, valid


def box_sums(maps: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """(B, K) sums of each map over its K boxes (map pixels, exclusive ends), from one summed-area table."""
    table = F.pad(maps.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    x0, y0, x1, y1 = torch.as_tensor(boxes, dtype=torch.long, device=maps.device).unbind(-1)
    rows = torch.arange(len(maps), device=maps.device)[:, None]
    return table[rows, y1, x1] - table[rows, y0, x1] - table[rows, y1, x0] + table[rows, y0, x0]


def box_areas(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def fidelity(boxes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B, K): IoU of each candidate (B, K, 4) with the frame's own box (candidate 0); -inf for invalid."""
    return np.where(valid, pairwise_iou(boxes, boxes[:, :1])[..., 0], -np.inf)


# --------------------------------------------------------------------------- the track


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of exclusive-end boxes a (..., K, 4) against b (..., L, 4): (..., K, L); 0 for empty unions."""
    a, b = np.asarray(a, np.float64)[..., :, None, :], np.asarray(b, np.float64)[..., None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    union = box_areas(a) + box_areas(b) - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def runs(shots: Sequence[tuple[int, int]], usable: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive usable frames, never crossing a shot boundary."""
    found = []
    for start, end in shots:
        flags = np.r_[False, usable[start:end], False].astype(np.int8)
        edges = np.flatnonzero(np.diff(flags))
        found += [(start + a, start + b) for a, b in zip(edges[::2], edges[1::2])]
    return found


def viterbi_track(boxes: np.ndarray, scores: np.ndarray, times: np.ndarray, shots: Sequence[tuple[int, int]],
                  weight: float, memory_s: float) -> np.ndarray:
    """(T,) chosen candidate per frame (-1 where no candidate is valid: scores all -inf) of
    candidate boxes (T, K, 4) with scores (T, K), frame times (T,) in seconds: see the module."""
    chosen = np.full(len(boxes), -1)
    for start, end in runs(shots, np.isfinite(scores).any(axis=1)):
        chosen[start:end] = best_path(boxes[start:end], scores[start:end], np.diff(times[start:end]),
                                      weight, memory_s)
    return chosen


def best_path(boxes: np.ndarray, scores: np.ndarray, gaps_s: np.ndarray, weight: float,
              memory_s: float) -> np.ndarray:
    """Viterbi over one run: all transition costs at once, then one max-plus step per frame."""
    coupling = weight * np.exp(-np.clip(gaps_s, 0, None) / memory_s)
    cost = coupling[:, None, None] * (1 - pairwise_iou(boxes[:-1], boxes[1:]))  # (T-1, K, K)
    total = scores[0].copy()
    back = np.zeros(scores.shape, np.int64)
    for t in range(1, len(scores)):
        options = total[:, None] - cost[t - 1]
        back[t] = options.argmax(0)
        total = options.max(0) + scores[t]
    path = np.empty(len(scores), np.int64)
    path[-1] = int(total.argmax())
    for t in range(len(scores) - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def smooth_track(candidates: np.ndarray, scores: np.ndarray, times: np.ndarray, shots: Sequence[tuple[int, int]],
                 weight: float, memory_s: float, sigma_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(chosen (T,), boxes (T, 4)): the Viterbi track's candidate per frame (-1: none), and its boxes
    averaged over time (zeros where none)."""
    chosen = viterbi_track(candidates, scores, times, shots, weight, memory_s)
    picked = np.take_along_axis(candidates, np.maximum(chosen, 0)[:, None, None], axis=1)[:, 0]
    found = chosen >= 0
    return chosen, np.where(found[:, None], temporal_average(picked, found, times, shots, sigma_s), 0.0)


def temporal_average(boxes: np.ndarray, found: np.ndarray, times: np.ndarray, shots: Sequence[tuple[int, int]],
                     sigma_s: float) -> np.ndarray:
    """(T, 4) boxes averaged over their run (see the module) with Gaussian weights of the time between
    frames, up to 3 sigma apart; frames without a box keep theirs (zeros)."""
    boxes = np.asarray(boxes, np.float64)
    if sigma_s <= 0:
        return boxes.copy()
    total, weights = boxes * found[:, None], found.astype(np.float64)
    run_id = np.full(len(boxes), -1)
    for number, (start, end) in enumerate(runs(shots, found)):
        run_id[start:end] = number
    reach = int((np.searchsorted(times, times + 3 * sigma_s, side="right") - np.arange(len(times))).max())
    summed, norm = total.copy(), weights.copy()
    for offset in range(1, reach):
        same = (run_id[offset:] == run_id[:-offset]) & (run_id[offset:] >= 0)
        weight = same * np.exp(-((times[offset:] - times[:-offset]) ** 2) / (2 * sigma_s**2))
        summed[:-offset] += weight[:, None] * boxes[offset:]
        norm[:-offset] += weight
        summed[offset:] += weight[:, None] * boxes[:-offset]
        norm[offset:] += weight
    averaged = summed / np.maximum(norm, 1e-12)[:, None]
    if found.any():  # a weighted mean stays within its inputs' range but for rounding (176 + 3e-14 > 176)
        averaged = np.clip(averaged, boxes[found].min(0), boxes[found].max(0))
    return np.where(found[:, None], averaged, boxes)


# --------------------------------------------------------------------------- jitter


def jitter(boxes: np.ndarray, found: np.ndarray, shots: Sequence[tuple[int, int]],
           frame_size: tuple[float, float]) -> dict:
    """Frame-to-frame change of the boxes (T, 4) over consecutive frames of a shot that both have one:
    mean 1 - IoU, and mean centre displacement over the frame's diagonal."""
    pairs = [(t, t + 1) for start, end in shots for t in range(start, end - 1) if found[t] and found[t + 1]]
    if not pairs:
        return {"pairs": 0, "one_minus_iou": None, "centre_shift": None}
    first, second = (np.asarray(boxes, np.float64)[list(side)] for side in zip(*pairs))
    iou = pairwise_iou(first[:, None], second[:, None])[:, 0, 0]
    shift = np.linalg.norm(box_centres(first) - box_centres(second), axis=1) / np.hypot(*frame_size)
    return {"pairs": len(pairs), "one_minus_iou": float(np.mean(1 - iou)), "centre_shift": float(np.mean(shift))}


def box_centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., :2] + boxes[..., 2:]) / 2
