"""Localization metrics: wsolevaluation's CorLoc / MaxBoxAcc / MaxBoxAccV2 over a threshold sweep, top-1.

Plain NumPy + OpenCV; torch tensors are accepted, and torch is imported only
for the "tcam" protocol's resize. No Ray.
"""
from tcam_ray.evaluation.boxes import (
    EVAL_SIZE,
    PROTOCOLS,
    IouCurves,
    as_maps,
    box_iou,
    iou_curves,
    make_thresholds,
    predict_boxes,
    resize_gt_boxes,
)
from tcam_ray.evaluation.metrics import LocalizationEvaluator, evaluate_maps

__all__ = [
    "EVAL_SIZE",
    "PROTOCOLS",
    "IouCurves",
    "LocalizationEvaluator",
    "as_maps",
    "box_iou",
    "evaluate_maps",
    "iou_curves",
    "make_thresholds",
    "predict_boxes",
    "resize_gt_boxes",
]
