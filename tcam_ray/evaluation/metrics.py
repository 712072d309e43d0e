"""CorLoc, MaxBoxAcc(V2), per-class CorLoc and top-1 accuracy, streamed and mergeable.

The evaluator keeps integer counts only, so data-parallel workers can sum
their `state()` arrays (e.g. ``torch.distributed.all_reduce`` on each) and one
`merge` gives the metrics of all frames.

CorLoc is MaxBoxAcc at IoU 0.5 (Choe et al., "Evaluating Weakly Supervised
Object Localization Methods Right", CVPR 2020; the metric TCAM reports): the %
of frames whose box has IoU >= 0.5 with one of their ground-truth boxes, at the
threshold of the sweep that maximises that %. MaxBoxAccV2 averages the best
accuracies at IoU 0.3, 0.5 and 0.7, each at its own best threshold (the paper
of Choe et al. pairs it with ``box_mode="all"``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tcam_ray.evaluation.boxes import as_maps, best_iou_per_threshold, check_box_mode, make_thresholds

CORLOC_IOU = 0.5


class LocalizationEvaluator:
    """Accumulates localization hits over a threshold sweep, and top-1 correctness.

    ``add`` takes a batch of maps (B, h, w) at model resolution with, per
    frame, its ground-truth boxes ``[x0, y0, x1, y1]`` in original pixels
    (exclusive ends; a frame may have several, the best-matching one counts),
    its original size ``(width, height)``, its class label and optionally the
    classifier's predicted class. Frames without any box count for top-1 only.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 thresholds: int | Sequence[float] | np.ndarray | None = None,
                 iou_thresholds: Sequence[int] = (30, 50, 70), box_mode: str = "largest"):
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
        self.box_mode = check_box_mode(box_mode)
        self.reset()

    def reset(self) -> None:
        sweep = self.thresholds.size
        self.hits = np.zeros((len(self.iou_thresholds), sweep), np.int64)
        self.class_hits = np.zeros((self.num_classes, sweep), np.int64)  # at IoU 0.5: CorLoc per class
        self.class_frames = np.zeros(self.num_classes, np.int64)
        self.frames_without_box = np.zeros(1, np.int64)
        self.top1_correct = np.zeros(1, np.int64)
        self.top1_frames = np.zeros(1, np.int64)

    # ----------------------------------------------------------------- adding
    def add(self, maps, gt_boxes: Sequence[Sequence[Sequence[float]]], image_sizes, labels,
            predictions=None) -> None:
        maps = as_maps(maps)
        sizes = as_array(image_sizes, np.float64).reshape(-1, 2)
        labels = as_array(labels, np.int64).reshape(-1)
        self.check_batch(maps, gt_boxes, sizes, labels, predictions)
        if predictions is not None:
            predictions = as_array(predictions, np.int64).reshape(-1)
            self.top1_correct += int(np.sum(predictions == labels))
            self.top1_frames += len(labels)
        frames = [i for i in range(len(maps)) if len(gt_boxes[i]) > 0]
        self.frames_without_box += len(maps) - len(frames)
        if frames:
            best_iou = np.stack([self.best_iou(maps[i], gt_boxes[i], sizes[i]) for i in frames])
            self.count_hits(best_iou, labels[frames])

    def best_iou(self, cam: np.ndarray, boxes: Sequence[Sequence[float]], image_size: np.ndarray) -> np.ndarray:
        gt = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if not np.all(np.isfinite(gt)) or np.any(gt[:, 2:] <= gt[:, :2]):
            raise ValueError(f"ground-truth boxes must be finite with x1 > x0 and y1 > y0, got {gt.tolist()}")
        return best_iou_per_threshold(cam, gt, tuple(image_size), self.thresholds, self.box_mode)

    def count_hits(self, best_iou: np.ndarray, labels: np.ndarray) -> None:
        """best_iou: (frames, thresholds); labels: (frames,)."""
        iou_levels = np.array(self.iou_thresholds, dtype=np.float64)[:, None, None] / 100
        self.hits += np.sum(best_iou[None] >= iou_levels, axis=1)
        np.add.at(self.class_hits, labels, (best_iou >= CORLOC_IOU).astype(np.int64))
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
        """Metrics in percent (None where there is nothing to measure), JSON-serialisable."""
        frames = self.frames
        top1 = percent(int(self.top1_correct[0]), int(self.top1_frames[0]))
        common = {
            "frames": frames,
            "frames_without_box": int(self.frames_without_box[0]),
            "top1": top1,
            "top1_frames": int(self.top1_frames[0]),
            "thresholds": [as_float(t) for t in self.thresholds],
            "box_mode": self.box_mode,
        }
        if frames == 0:
            return {"corloc": None, "best_threshold": None, "maxboxacc_v2": None,
                    "maxboxacc": {iou: None for iou in self.iou_thresholds}, "best_threshold_per_iou": {},
                    "per_class": {}, "corloc_per_threshold": [], **common}
        corloc_curve = 100.0 * self.class_hits.sum(axis=0) / frames
        best = int(np.argmax(corloc_curve))  # the lowest of tied thresholds
        accuracy = 100.0 * self.hits / frames
        return {
            "corloc": float(corloc_curve[best]),
            "best_threshold": as_float(self.thresholds[best]),
            "maxboxacc_v2": float(accuracy.max(axis=1).mean()),
            "maxboxacc": {iou: float(acc.max()) for iou, acc in zip(self.iou_thresholds, accuracy)},
            "best_threshold_per_iou": {iou: as_float(self.thresholds[int(np.argmax(acc))])
                                       for iou, acc in zip(self.iou_thresholds, accuracy)},
            "per_class": {name: 100.0 * int(self.class_hits[c, best]) / int(self.class_frames[c])
                          for c, name in enumerate(self.class_names) if self.class_frames[c] > 0},
            "corloc_per_threshold": corloc_curve.tolist(),
            **common,
        }


def as_float(threshold: np.float32) -> float:
    """A float32 threshold as the decimal it stands for (0.01, not 0.009999999776)."""
    return float(np.format_float_positional(threshold, unique=True))


def percent(count: int, total: int) -> float | None:
    return 100.0 * count / total if total else None


def as_array(values, dtype) -> np.ndarray:
    """NumPy array from a list, an array or a torch tensor (any device)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)
