"""Localization metrics: boxes from maps over a threshold sweep, CorLoc / MaxBoxAcc(V2), top-1.

Plain NumPy + OpenCV (torch tensors are accepted, torch is not imported); no Ray.
"""
from tcam_ray.evaluation.boxes import (
    BOX_MODES,
    as_maps,
    best_iou_per_threshold,
    box_iou,
    make_thresholds,
    predict_boxes,
    scale_boxes,
    sweep_boxes,
)
from tcam_ray.evaluation.metrics import LocalizationEvaluator

__all__ = [
    "BOX_MODES",
    "LocalizationEvaluator",
    "as_maps",
    "best_iou_per_threshold",
    "box_iou",
    "make_thresholds",
    "predict_boxes",
    "scale_boxes",
    "sweep_boxes",
]
