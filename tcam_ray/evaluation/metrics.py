"""CorLoc, MaxBoxAcc, MaxBoxAccV2, per-class CorLoc and top-1 accuracy, streamed and mergeable.

The metric is clovaai/wsolevaluation's BoxEvaluator (Choe et al., "Evaluating
Weakly Supervised Object Localization Methods Right", CVPR 2020). TCAM
reports it too. The box rules are in `tcam_ray.evaluation.boxes`. Per IoU level
K (30, 50, 70 by default), MaxBoxAcc[K] is the % of frames whose box has
IoU >= K/100 with one of their ground-truth boxes, at the threshold of the
sweep that maximises that %. With v1 the box is the largest contour's; with v2
it is the best of all contours' boxes.

- CorLoc is v1's MaxBoxAcc[50].
- MaxBoxAccV2 is the mean of v2's MaxBoxAcc over the IoU levels, each level at
  its own best threshold.
- A best threshold is the first one of those that tie.

The evaluator keeps integer counts only, so data-parallel workers can sum
their `state()` arrays (e.g. ``torch.distributed.all_reduce`` on each) and one
`merge` gives the metrics of all frames. `evaluate_maps` runs it once over a
set of maps and adds each frame's best IoU.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tcam_ray.evaluation.boxes import IouCurves, as_maps, check_protocol, iou_curves, make_thresholds

CORLOC_IOU = 50  # percent


class LocalizationEvaluator:
    """Accumulates localization hits over a threshold sweep, and top-1 correctness.

    ``add`` takes a batch of maps (B, h, w) in [0, 1] at any resolution, and
    for each frame:

    - its ground-truth boxes ``[x0, y0, x1, y1]`` in original pixels (a frame
      may have several, and the best-matching one counts);
    - its original size ``(width, height)``;
    - its class label;
    - optionally, the classifier's predicted class.

    Frames without any box count for top-1 only. ``protocol`` is the map path:
    ``"wsol"`` (wsolevaluation's) or ``"tcam"`` (TCAM's own). See
    `tcam_ray.evaluation.boxes`.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 thresholds: int | Sequence[float] | np.ndarray | None = None,
                 iou_thresholds: Sequence[int] = (30, 50, 70), protocol: str = "wsol"):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if not iou_thresholds or any(not 0 < iou <= 100 for iou in iou_thresholds):
            raise ValueError(f"IoU thresholds are percentages in (0, 100], got {tuple(iou_thresholds)}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        self.thresholds = make_thresholds(thresholds)
        self.iou_thresholds = tuple(int(iou) for iou in iou_thresholds)
        self.protocol = check_protocol(protocol)
        self.reset()

    def reset(self) -> None:
        shape = (len(self.iou_thresholds), self.thresholds.size)
        self.hits = np.zeros(shape, np.int64)  # v1, per IoU level and threshold
        self.hits_v2 = np.zeros(shape, np.int64)
        self.class_hits = np.zeros((self.num_classes, self.thresholds.size), np.int64)  # v1 at IoU 50
        self.class_frames = np.zeros(self.num_classes, np.int64)
        self.frames_without_box = np.zeros(1, np.int64)
        self.top1_correct = np.zeros(1, np.int64)
        self.top1_frames = np.zeros(1, np.int64)

    # ----------------------------------------------------------------- adding
    def add(self, maps, gt_boxes: Sequence[Sequence[Sequence[float]]], image_sizes, labels,
            predictions=None) -> IouCurves:
        """Count a batch. Returns its IoU curves, (B, thresholds) for v1 and for v2. The rows of
        frames without a ground-truth box are NaN."""
        maps = as_maps(maps)
        sizes = as_array(image_sizes, np.float64).reshape(-1, 2)
        labels = as_array(labels, np.int64).reshape(-1)
        self.check_batch(maps, gt_boxes, sizes, labels, predictions)
        if predictions is not None:
            predictions = as_array(predictions, np.int64).reshape(-1)
            self.top1_correct += int(np.sum(predictions == labels))
            self.top1_frames += len(labels)
        curves = IouCurves(*np.full((2, len(maps), self.thresholds.size), np.nan))
        frames = [i for i in range(len(maps)) if len(gt_boxes[i]) > 0]
        self.frames_without_box += len(maps) - len(frames)
        for i in frames:
            curves.v1[i], curves.v2[i] = iou_curves(maps[i], checked_boxes(gt_boxes[i]), sizes[i], self.thresholds,
                                                    self.protocol)
        if frames:
            self.count_hits(IouCurves(curves.v1[frames], curves.v2[frames]), labels[frames])
        return curves

    def count_hits(self, curves: IouCurves, labels: np.ndarray) -> None:
        """curves: (frames, thresholds) each; labels: (frames,). A frame hits at IoU K where IoU >= K/100."""
        levels = np.array(self.iou_thresholds)[:, None, None] / 100
        self.hits += np.sum(curves.v1[None] >= levels, axis=1)
        self.hits_v2 += np.sum(curves.v2[None] >= levels, axis=1)
        np.add.at(self.class_hits, labels, (curves.v1 >= CORLOC_IOU / 100).astype(np.int64))
        self.class_frames += np.bincount(labels, minlength=self.num_classes)

    def check_batch(self, maps: np.ndarray, gt_boxes, sizes: np.ndarray, labels: np.ndarray, predictions) -> None:
        batch = len(maps)
        lengths = {"gt_boxes": len(gt_boxes), "image_sizes": len(sizes), "labels": len(labels)}
        if predictions is not None:
            lengths["predictions"] = len(predictions)
        wrong = {name: n for name, n in lengths.items() if n != batch}
        if wrong:
            raise ValueError(f"batch of {batch} maps but lengths {wrong}")
        if np.any((labels < 0) | (labels >= self.num_classes)):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {sorted(set(labels.tolist()))}")
        if np.any(sizes <= 0):
            raise ValueError(f"image sizes must be positive (width, height), got {sizes.tolist()}")

    # ---------------------------------------------------------------- merging
    def state(self) -> dict[str, np.ndarray]:
        """The counts, as int64 arrays whose shapes depend only on the configuration."""
        return {
            "hits": self.hits.copy(),
            "hits_v2": self.hits_v2.copy(),
            "class_hits": self.class_hits.copy(),
            "class_frames": self.class_frames.copy(),
            "frames_without_box": self.frames_without_box.copy(),
            "top1_correct": self.top1_correct.copy(),
            "top1_frames": self.top1_frames.copy(),
        }

    def merge(self, state: Mapping[str, np.ndarray]) -> "LocalizationEvaluator":
        """Add another evaluator's counts (same configuration) to this one's; returns self."""
        mine = self.state()
        if set(state) != set(mine):
            raise ValueError(f"state keys {sorted(state)} differ from {sorted(mine)}")
        for name, counts in state.items():
            counts = as_array(counts, np.int64)
            if counts.shape != mine[name].shape:
                raise ValueError(f"state {name!r} has shape {counts.shape}, expected {mine[name].shape}: "
                                 "evaluators differ in classes, thresholds or IoU thresholds")
            getattr(self, name)[...] += counts
        return self

    @staticmethod
    def sum_states(states: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if not states:
            raise ValueError("sum_states needs at least one state")
        return {name: sum(as_array(s[name], np.int64) for s in states) for name in states[0]}

    # ---------------------------------------------------------------- results
    @property
    def frames(self) -> int:
        return int(self.class_frames.sum())

    def result(self) -> dict:
        """Metrics in percent (None where there is nothing to measure), JSON-serialisable.

        Thresholds are given as the float64 values swept (0.07 is
        0.07000000000000001), so a best threshold read back means the same map.
        """
        frames = self.frames
        common = {
            "frames": frames,
            "frames_without_box": int(self.frames_without_box[0]),
            "top1": percent(int(self.top1_correct[0]), int(self.top1_frames[0])),
            "top1_frames": int(self.top1_frames[0]),
            "thresholds": self.thresholds.tolist(),
            "protocol": self.protocol,
        }
        if frames == 0:
            nothing = {iou: None for iou in self.iou_thresholds}
            return {"corloc": None, "best_threshold": None, "maxboxacc_v2": None, "maxboxacc": nothing,
                    "maxboxacc_v2_per_iou": dict(nothing), "best_threshold_per_iou": {},
                    "best_threshold_per_iou_v2": {}, "per_class": {}, "corloc_per_threshold": [], **common}
        corloc_curve = self.class_hits.sum(axis=0) * 100.0 / frames
        best = int(np.argmax(corloc_curve))  # the first of tied thresholds
        v1 = self.best_per_iou(self.hits)
        v2 = self.best_per_iou(self.hits_v2)
        return {
            "corloc": float(corloc_curve[best]),
            "best_threshold": float(self.thresholds[best]),
            "maxboxacc": {iou: acc for iou, (acc, _) in v1.items()},
            "maxboxacc_v2": float(np.mean([acc for acc, _ in v2.values()])),
            "maxboxacc_v2_per_iou": {iou: acc for iou, (acc, _) in v2.items()},
            "best_threshold_per_iou": {iou: threshold for iou, (_, threshold) in v1.items()},
            "best_threshold_per_iou_v2": {iou: threshold for iou, (_, threshold) in v2.items()},
            "per_class": {name: 100.0 * int(self.class_hits[c, best]) / int(self.class_frames[c])
                          for c, name in enumerate(self.class_names) if self.class_frames[c] > 0},
            "corloc_per_threshold": corloc_curve.tolist(),
            **common,
        }

    def best_per_iou(self, hits: np.ndarray) -> dict[int, tuple[float, float]]:
        """Per IoU level, (MaxBoxAcc in %, its first best threshold) from hit counts (levels, thresholds)."""
        accuracy = hits * 100.0 / self.frames
        best = np.argmax(accuracy, axis=1)
        return {iou: (float(acc[b]), float(self.thresholds[b]))
                for iou, acc, b in zip(self.iou_thresholds, accuracy, best)}


def evaluate_maps(maps, boxes: Sequence[Sequence[Sequence[float]]], image_sizes, protocol: str = "wsol",
                  thresholds: int | Sequence[float] = 100) -> dict:
    """CorLoc, MaxBoxAcc and MaxBoxAccV2 of a set of maps, plus each frame's best IoU.

    Args:
        maps: float32 (F, H, W) in [0, 1], NumPy or torch, at any resolution.
        boxes: per frame, a list of ground-truth boxes ``[x0, y0, x1, y1]`` in
            original-image pixels (as wsolevaluation's ``localization.txt``).
        image_sizes: (F, 2), each frame's original ``(width, height)``.
        protocol: ``"wsol"`` for clovaai/wsolevaluation's map path (bicubic
            resize to 224 x 224, then min-max normalisation), ``"tcam"`` for
            TCAM's own (bilinear resize, no renormalisation).
        thresholds: the number N of map thresholds ``np.arange(0, 1, 1/N)``
            (100 and 1000 are wsolevaluation's ``cam_curve_interval`` 0.01 and
            0.001), or the thresholds themselves.

    Returns:
        `LocalizationEvaluator.result()` (values in percent). It holds
        ``corloc`` (v1's MaxBoxAcc at IoU 50), ``maxboxacc`` (v1, per IoU),
        ``maxboxacc_v2`` (the mean of v2's per-IoU values), ``best_threshold``
        and the rest. Two arrays of shape (F,) are added: ``best_iou`` and
        ``best_iou_v2``, each frame's best IoU over all thresholds with v1 and
        with v2 (NaN for a frame without a box).
    """
    evaluator = LocalizationEvaluator(1, thresholds=thresholds, protocol=protocol)
    curves = evaluator.add(maps, boxes, image_sizes, np.zeros(len(boxes), np.int64))
    return {**evaluator.result(), "best_iou": best_over_thresholds(curves.v1),
            "best_iou_v2": best_over_thresholds(curves.v2)}


def best_over_thresholds(curves: np.ndarray) -> np.ndarray:
    """Row maxima of (frames, thresholds) curves; NaN rows (frames without a box) stay NaN."""
    best = np.full(len(curves), np.nan)
    scored = ~np.isnan(curves).any(axis=1)
    best[scored] = curves[scored].max(axis=1)
    return best


def checked_boxes(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    gt = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.all(np.isfinite(gt)) or np.any(gt[:, 2:] <= gt[:, :2]):
        raise ValueError(f"ground-truth boxes must be finite with x1 > x0 and y1 > y0, got {gt.tolist()}")
    return gt


def percent(count: int, total: int) -> float | None:
    return 100.0 * count / total if total else None


def as_array(values, dtype) -> np.ndarray:
    """NumPy array from a list, an array or a torch tensor (any device)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)
