"""Boxes from localization maps, and their IoU with ground-truth boxes.

Conventions (shared with the dataset layout and the synthetic generator):

- A box is ``[x0, y0, x1, y1]`` with exclusive ``x1``/``y1``: it covers the
  pixels ``x0 .. x1-1`` and ``y0 .. y1-1``, so its area is
  ``(x1 - x0) * (y1 - y0)``. Coordinates are pixel *edges*, which is what makes
  scaling exact: map pixel ``i`` spans ``[i, i+1)`` in map coordinates and
  ``[i*sx, (i+1)*sx)`` in original-image coordinates.
- A map is an ``h x w`` array of scores in [0, 1]. The binary map at threshold
  ``t`` is ``map >= t`` (thresholds are absolute; the maps are min-max
  normalised, so this matches wsol-done-right's max-relative thresholds up to
  its uint8 quantisation and strict ``>``).
- Boxes are found at map resolution and scaled to original pixels with
  ``sx = W_orig / w_map`` and ``sy = H_orig / h_map``. IoU between axis-aligned
  boxes is invariant under separate x/y scaling (every area, intersections
  included, is multiplied by ``sx * sy``), so this equals thresholding the map
  upsampled to full resolution up to where the upsampling interpolates across
  a box edge: at most one map pixel (``sx`` or ``sy`` original pixels) per edge.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

BOX_MODES = ("largest", "all")
DEFAULT_THRESHOLD_COUNT = 100
EMPTY_BOX = np.zeros(4)


def make_thresholds(thresholds: int | Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """The threshold sweep as a strictly increasing float32 array.

    ``None`` gives the default 100 thresholds, an int ``n`` gives ``i / n`` for
    ``i`` in ``0 .. n-1`` (the same values as ``np.arange(0, 1, 1/n)`` without
    its accumulated rounding: 0.07 is exactly 0.07), a sequence is used as is.
    float32 because maps are compared in float32: a map value of 0.7 must pass
    the threshold 0.7.
    """
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLD_COUNT
    if isinstance(thresholds, (int, np.integer)):
        if thresholds < 1:
            raise ValueError(f"the threshold count must be at least 1, got {thresholds}")
        values = np.arange(int(thresholds)) / int(thresholds)
    else:
        values = np.asarray(thresholds, dtype=np.float64)
    values = values.astype(np.float32)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise ValueError("thresholds must be finite and strictly increasing")
    return values


def check_box_mode(box_mode: str) -> str:
    if box_mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
    return box_mode


def threshold_levels(cam: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per pixel, how many thresholds it reaches: ``map >= thresholds[t]`` iff ``level > t``.

    The float comparisons happen once, in a binary search per pixel; each
    threshold's binary map is then one uint8 comparison (uint16 for sweeps of
    more than 255 thresholds).
    """
    levels = np.searchsorted(thresholds, cam, side="right")
    return levels.astype(np.uint8 if thresholds.size < 256 else np.uint16)


def contour_boxes(binary: np.ndarray, box_mode: str) -> np.ndarray:
    """Bounding boxes (n, 4) of the contours of a non-empty binary map, at map resolution.

    As wsol-done-right (which TCAM's evaluation uses): "all" takes the whole
    contour tree, so the borders of holes are candidates too; "largest" keeps
    the contour of largest polygon area (the first one on ties), searched among
    the outer contours only, which gives the same box since a hole's border
    lies inside its blob's.
    """
    if box_mode == "largest":
        contours = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[-2]
        contours = [max(contours, key=cv2.contourArea)]
    else:
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.float64).reshape(-1, 4)
    rects[:, 2:] += rects[:, :2]  # (x, y, w, h) -> (x0, y0, x1, y1), exclusive ends
    return rects


def sweep_boxes(cam: np.ndarray, thresholds: np.ndarray, box_mode: str = "largest") -> tuple[np.ndarray, np.ndarray]:
    """Candidate boxes of one map at every threshold of the sweep, at map resolution.

    Returns ``(boxes (n, 4), owner (n,))`` where ``owner[i]`` is the index of
    the threshold box ``i`` belongs to, sorted, every threshold owning at least
    one box: ``[0, 0, 0, 0]`` when its binary map is empty (the degenerate box:
    IoU 0), ``[0, 0, w, h]`` when the binary map is full.

    Speed: thresholds whose binary map equals the previous one's (no map value
    between them, common with quantised maps) reuse its boxes, and thresholds
    whose binary map is empty or full need no contour search.
    """
    levels = threshold_levels(cam, thresholds)
    pixels_on = count_pixels_on(levels, thresholds.size)
    changed = np.r_[True, pixels_on[1:] != pixels_on[:-1]]
    boxes_of_change = {t: boxes_at_level(levels, t, pixels_on[t], box_mode) for t in np.flatnonzero(changed).tolist()}
    source = np.maximum.accumulate(np.where(changed, np.arange(thresholds.size), 0))
    per_threshold = [boxes_of_change[t] for t in source.tolist()]
    owner = np.repeat(np.arange(thresholds.size), [len(b) for b in per_threshold])
    return np.concatenate(per_threshold), owner


def count_pixels_on(levels: np.ndarray, threshold_count: int) -> np.ndarray:
    """How many pixels each threshold's binary map has on (non-increasing in t)."""
    per_level = np.bincount(levels.ravel(), minlength=threshold_count + 1)
    return per_level[::-1].cumsum()[::-1][1:]


def boxes_at_level(levels: np.ndarray, t: int, pixels_on: int, box_mode: str) -> np.ndarray:
    height, width = levels.shape
    if pixels_on == 0:
        return EMPTY_BOX[None]
    if pixels_on == levels.size:
        return np.array([[0.0, 0.0, width, height]])
    binary = np.greater(levels, t).view(np.uint8)  # t a Python int: a NumPy int64 would upcast the comparison
    return contour_boxes(binary, box_mode)


def scale_boxes(boxes: np.ndarray, map_size: tuple[int, int], image_size: tuple[float, float]) -> np.ndarray:
    """Boxes from map pixels to original-image pixels; sizes are (width, height)."""
    sx = image_size[0] / map_size[0]
    sy = image_size[1] / map_size[1]
    return np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])


def box_iou(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU matrix (n, g) of boxes (n, 4) against boxes (g, 4).

    A pair whose union is empty (two degenerate boxes) has IoU 0: an empty
    prediction never localizes anything.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(1, -1, 4)
    inter_w = np.clip(np.minimum(boxes[..., 2], gt_boxes[..., 2]) - np.maximum(boxes[..., 0], gt_boxes[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(boxes[..., 3], gt_boxes[..., 3]) - np.maximum(boxes[..., 1], gt_boxes[..., 1]), 0, None)
    inter = inter_w * inter_h
    union = box_area(boxes) + box_area(gt_boxes) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def best_iou_per_threshold(cam: np.ndarray, gt_boxes: np.ndarray, image_size: tuple[float, float],
                           thresholds: np.ndarray, box_mode: str = "largest") -> np.ndarray:
    """For each threshold, the best IoU of its box(es) against any ground-truth box (original pixels)."""
    boxes, owner = sweep_boxes(cam, thresholds, box_mode)
    boxes = scale_boxes(boxes, (cam.shape[1], cam.shape[0]), image_size)
    best_per_box = box_iou(boxes, gt_boxes).max(axis=1)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    return np.maximum.reduceat(best_per_box, starts)


def predict_boxes(cam: np.ndarray, threshold: float, image_size: tuple[float, float],
                  box_mode: str = "largest") -> np.ndarray:
    """The box(es) (n, 4) a map gives at one threshold, in original-image pixels (e.g. to draw them)."""
    cam = as_map(cam)
    thresholds = make_thresholds([threshold])
    boxes, _ = sweep_boxes(cam, thresholds, check_box_mode(box_mode))
    return scale_boxes(boxes, (cam.shape[1], cam.shape[0]), image_size)


def as_map(cam) -> np.ndarray:
    """One map (h, w), NumPy or torch, as float32 (see `as_maps`)."""
    if hasattr(cam, "detach"):
        cam = cam.detach().float().cpu().numpy()
    cam = np.asarray(cam)
    if cam.ndim != 2:
        raise ValueError(f"a map must have shape (h, w), got {cam.shape}")
    return as_maps(cam[None])[0]


def as_maps(maps) -> np.ndarray:
    """A batch of maps as float32 (B, h, w) in [0, 1].

    Accepts NumPy arrays or torch tensors (any device), (B, h, w) or
    (B, 1, h, w); uint8 maps (as a CAM store may keep them) are read as
    value / 255. Non-finite values are an error: they usually come from
    min-max normalising a constant map, and would silently count as misses.
    """
    if hasattr(maps, "detach"):
        maps = maps.detach().float().cpu().numpy()
    maps = np.asarray(maps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (B, h, w) or (B, 1, h, w), got {maps.shape}")
    if maps.dtype == np.uint8:
        return maps.astype(np.float32) / 255.0
    maps = maps.astype(np.float32, copy=False)
    bad = ~np.isfinite(maps).reshape(len(maps), -1).all(axis=1)
    if bad.any():
        raise ValueError(f"maps {np.flatnonzero(bad).tolist()} of the batch hold NaN or infinite values")
    return maps
