"""Evaluate a stage-1 checkpoint on a split: CorLoc, MaxBoxAccV2, per-class CorLoc, top-1,
plus the pictures (CorLoc vs threshold, a grid of CAMs with GT and predicted boxes).

Runs in this process (frames decoded by the same code as the Ray pipeline):
a few hundred eval frames do not repay starting Ray.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import viz
from ..config import Config
from ..data import DatasetError, FrameIndex, index_dataset
from ..data.frames import IMAGE, LABEL, ROW, split_rows
from ..data.tensors import normalise
from ..evaluation import LocalizationEvaluator
from ..evaluation.boxes import predict_boxes
from ..io import atomic_write_text
from ..methods.cam import compute_cam_output
from ..models import build_classifier
from ..models.weights import load_strict
from ..models.tcam import build_tcam_model, foreground_map
from .checkpoints import STATE_FILE, CheckpointError, checkpoint_config, load_state, read_meta
from .context import LocalContext
from .runner import EvalTargets

GRID_FRAMES = 12
SUMMARY_KEYS = ("corloc", "maxboxacc_v2", "maxboxacc", "per_class", "top1", "best_threshold", "frames")


def load_classifier(checkpoint: Path, device: torch.device) -> tuple[torch.nn.Module, dict, Config]:
    """A stage-1 checkpoint's classifier (eval mode), its meta and its training config."""
    meta = read_meta(checkpoint)
    if meta.get("stage", "cam") != "cam":
        raise CheckpointError(f"{checkpoint} is a stage-{meta['stage']} checkpoint; this needs a stage-1 (cam) one")
    trained = checkpoint_config(checkpoint)
    model = build_classifier(trained.model.arch, len(meta["classes"]), layer4_stride=trained.model.layer4_stride,
                             layer3_stride=trained.model.layer3_stride)
    load_strict(model, load_state(checkpoint, device)["model"], str(checkpoint / STATE_FILE))
    return model.to(device, memory_format=torch.channels_last).eval(), meta, trained  # as normalise() lays out images


def load_model(checkpoint: Path, device: torch.device) -> tuple[torch.nn.Module, dict, Config]:
    """A checkpoint's model of either stage (eval mode, channels-last as the training runner has it:
    on CPU, normalise()'s channels-last images through a contiguous model run several times slower),
    its meta and its training config."""
    meta = read_meta(checkpoint)
    if meta.get("stage") != "tcam":
        return load_classifier(checkpoint, device)
    trained = checkpoint_config(checkpoint)
    model = build_tcam_model(trained.model.arch, len(meta["classes"]), layer4_stride=trained.model.layer4_stride,
                             decoder_widths=trained.tcam.decoder_widths, layer3_stride=trained.model.layer3_stride)
    load_strict(model, load_state(checkpoint, device)["model"], str(checkpoint / STATE_FILE))
    return model.to(device, memory_format=torch.channels_last).eval(), meta, trained


def load_predictor(checkpoint: Path, device: torch.device, cfg: Config) -> tuple[Callable, dict, Config]:
    """(images, labels) -> (maps, predicted classes) for a checkpoint of either stage."""
    model, meta, trained = load_model(checkpoint, device)
    if meta.get("stage") == "tcam":
        def tcam_maps(images, labels):
            with torch.no_grad():
                out = model(images)
            return foreground_map(out.seg_logits), out.cls_logits.argmax(1)
        return tcam_maps, meta, trained

    def cam_maps(images, labels):
        out = compute_cam_output(model, images, labels if cfg.eval.cam_target == "true" else None, cfg.cam.method)
        return out.maps, out.logits.argmax(1)
    return cam_maps, meta, trained


def check_same_classes(meta: dict, index: FrameIndex, checkpoint: Path) -> None:
    if meta["classes"] != index.info.classes:
        raise DatasetError([f"{checkpoint} was trained on classes {meta['classes']} but the dataset at "
                            f"{index.info.root} has {index.info.classes}"])


def evaluate_checkpoint(checkpoint: str | Path, cfg: Config, split: str, out_dir: Path) -> dict:
    """Evaluate on `split` of cfg.dataset with the checkpoint's own input settings; write report.json
    and plots into out_dir; return the report."""
    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    device = torch.device("cuda" if cfg.scale.use_gpu and torch.cuda.is_available() else "cpu")
    predict, meta, trained = load_predictor(checkpoint, device, cfg)
    index = index_dataset(cfg.dataset)
    check_same_classes(meta, index, checkpoint)
    run_cfg = dataclasses.replace(cfg, input=trained.input, model=trained.model)
    evaluator = LocalizationEvaluator(len(meta["classes"]), meta["classes"], cfg.eval.thresholds,
                                      cfg.eval.iou_thresholds, protocol=cfg.eval.protocol)
    targets = EvalTargets(split_rows(index.table, split))
    shown = []
    for batch in LocalContext(run_cfg, index.table).eval_batches(split):
        images = normalise(batch[IMAGE], trained.input.mean, trained.input.std)
        labels = batch[LABEL]
        maps, predictions = predict(images, labels)
        boxes, sizes = targets.lookup(batch[ROW])
        evaluator.add(maps, boxes, sizes, labels.cpu().numpy(), predictions.cpu().numpy())
        if len(shown) < GRID_FRAMES:
            shown += list(zip(batch[IMAGE].cpu().numpy(), maps.cpu().numpy(), boxes, sizes))[: GRID_FRAMES - len(shown)]
    result = evaluator.result()
    report = {
        "dataset": cfg.dataset.name, "split": split, "checkpoint": str(checkpoint),
        "stages": {meta.get("stage", "cam"): {k: result[k] for k in SUMMARY_KEYS if k in result}},
        "runtime_s": round(time.perf_counter() - started, 2),
    }
    write_outputs(out_dir, report, result, shown, cfg)
    return report


def write_outputs(out_dir: Path, report: dict, result: dict, shown: list, cfg: Config) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1))
    viz.plot_threshold_curve(result["thresholds"], result["corloc_per_threshold"], out_dir / "corloc_threshold.png")
    if shown:
        viz.write_png(out_dir / "cams.png", cam_grid(shown, result["best_threshold"], cfg.eval.protocol))


def cam_grid(shown: list, threshold: float, protocol: str) -> np.ndarray:
    """Each frame as [frame + GT | CAM overlay + GT + predicted box], at model resolution."""
    panels = []
    for image, cam, boxes, (width, height) in shown:
        side = image.shape[0]
        scale = np.array([side / width, side / height, side / width, side / height])
        gt = [np.asarray(b) * scale for b in boxes]
        predicted = predict_boxes(cam, threshold, (side, side), protocol)
        panels.append(viz.map_panel(image, cam, gt, predicted))
    return viz.grid(panels, columns=3, cell=(panels[0].shape[1] * 2, panels[0].shape[0] * 2))


def summary_lines(report: dict) -> list[str]:
    lines = []
    for stage, result in report["stages"].items():
        lines += [f"{stage.upper()} on {report['dataset']} / {report['split']}: {result['frames']} frames",
                  f"CorLoc {result['corloc']:.1f}%  (best threshold {result['best_threshold']:.2f})",
                  f"MaxBoxAccV2 {result['maxboxacc_v2']:.1f}%  top-1 {result['top1']:.1f}%"]
        lines += [f"  {name:<16} CorLoc {value:.1f}%" for name, value in result["per_class"].items()]
    return lines
