"""Boxes from localization maps over a threshold sweep, and their IoU with ground-truth boxes.

The rules are clovaai/wsolevaluation's BoxEvaluator (Choe et al., "Evaluating
Weakly Supervised Object Localization Methods Right", CVPR 2020), which TCAM's
evaluation copies; ``tests/test_wsol_metric.py`` checks them against both on
300 frames. Everything happens at 224 x 224 (`EVAL_SIZE`):

- The map path depends on the protocol. ``"wsol"`` (wsolevaluation): the map
  in float64, ``cv2.resize`` bicubic to 224 x 224, then min-max normalised (a
  constant map becomes all zeros). ``"tcam"`` (TCAM's own code): bilinear
  ``torch.nn.functional.interpolate`` (``align_corners=False``) in float32, no
  renormalisation. Either way the result is cast to ``uint8`` as
  ``(map * 255).astype(np.uint8)``, which truncates.
- The binary map at threshold ``t`` is ``u8 > int(t * u8.max())``: strict, and
  relative to the map's maximum. It is unchanged between thresholds that no
  ``uint8`` value separates, so the contours are searched once per distinct
  binary map, never once per threshold.
- Contours come from ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``, so
  the borders of holes count too. The "v1" box (MaxBoxAcc, CorLoc) is that of
  the contour of largest ``cv2.contourArea`` (the first one on ties). "v2"
  (MaxBoxAccV2) keeps the boxes of all contours. A contour with bounding
  rectangle ``x, y, w, h`` gives the box ``(x, y, min(x + w, 223), min(y + h, 223))``.
- Boxes in the 224 grid are inclusive: ``[x0, y0, x1, y1]`` covers
  ``(x1 - x0 + 1) * (y1 - y0 + 1)`` pixels, for predictions and ground truth
  alike. A ground-truth box ``[x0, y0, x1, y1]`` in original-image pixels
  becomes ``int(x * 224 / W)``, ``int(y * 224 / H)`` per coordinate.
- The score of a frame at a threshold is the best IoU over all (predicted box,
  ground-truth box) pairs.

One deliberate difference from wsolevaluation: a binary map with no contour
(a map whose ``uint8`` version is all zeros) gives no box, and IoU 0. wsolevaluation
puts the box ``[0, 0, 0, 0]`` there, which with the inclusive convention is the
pixel at the origin and scores a tiny IoU against a ground-truth box covering it
(never a hit).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import cv2
import numpy as np

PROTOCOLS = ("wsol", "tcam")
EVAL_SIZE = 224  # the evaluation grid is EVAL_SIZE x EVAL_SIZE
LAST_PIXEL = EVAL_SIZE - 1
DEFAULT_THRESHOLD_COUNT = 100


class IouCurves(NamedTuple):
    """Per threshold, a frame's best IoU: with the largest contour's box (v1) and with all boxes (v2)."""

    v1: np.ndarray
    v2: np.ndarray


def make_thresholds(thresholds: int | Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """The threshold sweep as a float64 array.

    ``None`` gives 100 thresholds. An int ``n`` gives the first ``n`` values of
    ``np.arange(0, 1, 1 / n)``. These are wsolevaluation's ``cam_curve_interval``
    lists, bit for bit: for ``n`` = 100 the list of interval 0.01, where 0.07 is
    0.07000000000000001. The bits matter because ``int(t * max)`` is applied to
    them. For some ``n`` (49, for one) ``np.arange`` gives one more value, just
    below 1, and that value is left out. A sequence is used as given. It must
    increase strictly and lie in [0, 1).
    """
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLD_COUNT
    if isinstance(thresholds, (int, np.integer)):
        if thresholds < 1:
            raise ValueError(f"the threshold count must be at least 1, got {thresholds}")
        values = np.arange(0, 1, 1 / int(thresholds))[: int(thresholds)]
    else:
        values = np.asarray(thresholds, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise ValueError("thresholds must be finite and strictly increasing")
    if values[0] < 0 or values[-1] >= 1:
        raise ValueError(f"thresholds must lie in [0, 1), got {values[0]} .. {values[-1]}")
    return values


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


# --------------------------------------------------------------------------- the map path


def eval_map(cam: np.ndarray, protocol: str) -> np.ndarray:
    """One float32 map (h, w) in [0, 1] as the 224 x 224 uint8 map that the protocol thresholds."""
    resized = wsol_map(cam) if check_protocol(protocol) == "wsol" else tcam_map(cam)
    return (resized * 255).astype(np.uint8)


def wsol_map(cam: np.ndarray) -> np.ndarray:
    """wsolevaluation: float64, bicubic resize, then min-max normalisation (constant -> zeros)."""
    resized = cv2.resize(cam.astype(np.float64), (EVAL_SIZE, EVAL_SIZE), interpolation=cv2.INTER_CUBIC)
    if resized.min() == resized.max():
        return np.zeros_like(resized)
    resized -= resized.min()
    resized /= resized.max()
    return resized


def tcam_map(cam: np.ndarray) -> np.ndarray:
    """TCAM's inference: float32, bilinear resize (align_corners=False), no renormalisation."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(tensor, (EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)[0, 0].numpy()


def threshold_levels(thresholds: np.ndarray, u8_max: int) -> np.ndarray:
    """``int(t * max)`` for every threshold: pixels above their level are on."""
    return (np.asarray(thresholds, dtype=np.float64) * float(u8_max)).astype(np.int64)


def distinct_binaries(u8: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct binary maps of the sweep: ``(levels, pixels_on, binary_of_threshold)``.

    Binary map ``b`` is ``u8 > levels[b]`` with ``pixels_on[b]`` pixels on, and
    threshold ``t`` gives binary map ``binary_of_threshold[t]``. Binary maps are
    nested, so two of them with the same pixel count are the same map.
    """
    levels = threshold_levels(thresholds, int(u8.max()))
    above = u8.size - np.cumsum(np.bincount(u8.ravel(), minlength=256))  # above[k]: pixels with u8 > k
    pixels_on, first, binary_of_threshold = np.unique(above[levels], return_index=True, return_inverse=True)
    return levels[first], pixels_on, binary_of_threshold


# --------------------------------------------------------------------------- contours and boxes


def find_contours(u8: np.ndarray, level: int) -> Sequence[np.ndarray]:
    binary = np.greater(u8, level).view(np.uint8)  # level a Python int, so the comparison stays in uint8
    return cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]


def contour_boxes(contours: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The boxes (n, 4) (inclusive, in the 224 grid) of non-empty contours, and twice their areas.

    The areas are ``cv2.contourArea`` (the shoelace formula over the contour's
    points, exact for integer points) and the boxes come from
    ``cv2.boundingRect``, which spans the points: ``x + w`` is ``max x + 1``.
    Both are computed for all contours at once.
    """
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    lengths = np.array([len(c) for c in contours])
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    low = np.minimum.reduceat(points, starts)
    high = np.minimum(np.maximum.reduceat(points, starts) + 1, LAST_PIXEL)
    following = np.arange(1, len(points) + 1)
    following[starts + lengths - 1] = starts  # each contour is a closed polygon
    x, y = points[:, 0], points[:, 1]
    twice_areas = np.abs(np.add.reduceat(x * y[following] - x[following] * y, starts))
    return np.concatenate([low, high], axis=1), twice_areas


def largest_of_each(twice_areas: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Index of the largest contour of each group of ``counts`` consecutive ones (the first on ties);
    the groups must not be empty."""
    owner = np.repeat(np.arange(len(counts)), counts)
    largest_area = np.maximum.reduceat(twice_areas, np.r_[0, np.cumsum(counts)[:-1]])
    candidates = np.flatnonzero(twice_areas == largest_area[owner])
    return candidates[np.unique(owner[candidates], return_index=True)[1]]


def resize_gt_boxes(gt_boxes, image_size: Sequence[float]) -> np.ndarray:
    """Ground-truth boxes (g, 4) in original pixels as the 224 grid's inclusive boxes: ``int(x * 224 / W)``."""
    width, height = (float(v) for v in image_size)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    return (gt * EVAL_SIZE / np.array([width, height, width, height])).astype(np.int64)


def box_iou(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU matrix (n, g) of inclusive integer boxes (n, 4) against (g, 4): every side counts +1.

    A pair whose union is empty or negative (boxes with x1 < x0) has IoU 0.
    """
    a = np.asarray(boxes, dtype=np.int64).reshape(-1, 1, 4)
    b = np.asarray(gt_boxes, dtype=np.int64).reshape(1, -1, 4)
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    union = inclusive_area(a) + inclusive_area(b) - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def inclusive_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)


# --------------------------------------------------------------------------- one frame


def iou_curves(cam: np.ndarray, gt_boxes, image_size: Sequence[float], thresholds: np.ndarray,
               protocol: str = "wsol") -> IouCurves:
    """A frame's best IoU at every threshold of the sweep, v1 and v2, from one contour search
    per distinct binary map.

    cam: float32 map (h, w) in [0, 1]; gt_boxes: (g, 4) ``[x0, y0, x1, y1]`` in
    original pixels; image_size: ``(width, height)`` of the original image.
    """
    u8 = eval_map(cam, protocol)
    levels, pixels_on, binary_of_threshold = distinct_binaries(u8, thresholds)
    contours_of = [find_contours(u8, level) if on else () for level, on in zip(levels.tolist(), pixels_on.tolist())]
    counts = np.array([len(c) for c in contours_of])
    best_v1, best_v2 = np.zeros(len(counts)), np.zeros(len(counts))  # no contour: no box, IoU 0
    found = counts > 0
    if found.any():
        boxes, twice_areas = contour_boxes([c for contours in contours_of for c in contours])
        best_per_box = box_iou(boxes, resize_gt_boxes(gt_boxes, image_size)).max(axis=1)
        best_v1[found] = best_per_box[largest_of_each(twice_areas, counts[found])]
        best_v2[found] = np.maximum.reduceat(best_per_box, np.r_[0, np.cumsum(counts[found])[:-1]])
    return IouCurves(best_v1[binary_of_threshold], best_v2[binary_of_threshold])


def predict_boxes(cam, threshold: float, image_size: Sequence[float], protocol: str = "wsol",
                  all_contours: bool = False) -> np.ndarray:
    """The box(es) (n, 4) a map gives at one threshold, in original-image pixels (e.g. to draw them).

    The same map path, threshold rule and boxes as the metric, so the best
    threshold of an evaluation means the same here: the largest contour's box
    (v1, as CorLoc counts it), or with ``all_contours`` every contour's (v2).
    The 224 grid's inclusive box becomes exclusive-end pixel edges in the
    original image: ``x0 * W / 224, y0 * H / 224, (x1 + 1) * W / 224, (y1 + 1) * H / 224``.
    A map with no contour at the threshold gives an empty (0, 4) array.
    """
    u8 = eval_map(as_map(cam), protocol)
    contours = find_contours(u8, int(threshold_levels([threshold], int(u8.max()))[0]))
    if not contours:
        return np.zeros((0, 4))
    boxes, twice_areas = contour_boxes(contours)
    if not all_contours:
        boxes = boxes[[int(np.argmax(twice_areas))]]
    width, height = (float(v) for v in image_size)
    scale = np.array([width, height, width, height]) / EVAL_SIZE
    return (boxes + np.array([0, 0, 1, 1])) * scale


# --------------------------------------------------------------------------- inputs


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
