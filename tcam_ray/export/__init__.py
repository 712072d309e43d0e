"""Export a checkpoint of either stage as ONNX, a torch.export ExportedProgram or TorchScript.

The exported model takes float32 images (N, 3, H, W), normalised as the checkpoint's training input
((pixel / 255 - mean) / std, H = W = input.crop_size, any N) and gives the localization map (N, H, W)
in [0, 1] and the class logits (N, C). The file carries metadata (`read_metadata`): stage, classes,
input size and normalisation, the CAM method, and the backbone's strides (to rebuild the model).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .formats import FORMATS, METADATA_FILE, METADATA_KEY, check_format, load_runner, read_metadata, write
from .localizers import OUTPUT_NAMES, CamLocalizer, ExportError, TcamLocalizer

__all__ = ["FORMATS", "METADATA_FILE", "METADATA_KEY", "OUTPUT_NAMES", "CamLocalizer", "ExportError",
           "ExportReport", "TcamLocalizer", "export_checkpoint", "read_metadata"]

EXPORT_FORMAT = "tcam-ray export"
EXPORT_VERSION = 1
TOLERANCE = 1e-3  # max abs difference to PyTorch allowed on each output (maps in [0, 1], logits)


@dataclass
class ExportReport:
    out: Path
    fmt: str
    metadata: dict
    max_abs_diff: dict[str, float]  # per output name: exported file vs the PyTorch model on random input
    check_batch: int  # batch size of that random input (not the one the export was traced with)
    seconds: float


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path, cam_method: str | None = None,
                      check_batch: int = 3) -> ExportReport:
    """Export `checkpoint` (either stage) into `out` as `fmt`, then run the file on a random batch and
    compare it with the PyTorch model; a difference over TOLERANCE is an ExportError (the file is removed).
    `cam_method` (stage 1) defaults to the checkpoint's cam.method."""
    import torch

    from ..train.evaluate import load_model

    started = time.perf_counter()
    check_format(fmt)
    checkpoint, out = Path(checkpoint), Path(out)
    model, meta, trained = load_model(checkpoint, torch.device("cpu"))
    model = model.to(memory_format=torch.contiguous_format)
    stage = meta.get("stage", "cam")
    method = cam_method or trained.cam.method
    localizer = (TcamLocalizer(model) if stage == "tcam" else CamLocalizer(model, method)).eval()
    metadata = export_metadata(checkpoint, meta, trained, localizer)
    size = trained.input.crop_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, size, size, generator=generator)
    write_file(localizer, example, fmt, out, metadata)
    images = torch.randn(check_batch, 3, size, size, generator=generator)
    diffs = compare(localizer, load_runner(out, fmt), images)
    if any(diff > TOLERANCE for diff in diffs.values()):
        out.unlink(missing_ok=True)
        raise ExportError(f"{out}: the {fmt} model's outputs differ from PyTorch's on random input "
                          f"({format_diffs(diffs)}; over {TOLERANCE:g}); the file was removed")
    return ExportReport(out, fmt, metadata, diffs, check_batch, time.perf_counter() - started)


def write_file(localizer, example, fmt: str, out: Path, metadata: dict) -> None:
    """Through a temporary sibling and a rename: a failed export leaves no half-written file."""
    from ..io import writing

    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")  # torch.export.save wants the suffix
    with writing(out, tmp):
        out.parent.mkdir(parents=True, exist_ok=True)
        write(localizer, example, fmt, tmp, metadata)
        os.replace(tmp, out)


def compare(localizer, run_exported, images) -> dict[str, float]:
    """Max abs difference per output between the exported file and the PyTorch model on `images`."""
    import torch

    with torch.no_grad():
        expected = localizer(images)
    got = run_exported(images)
    return {name: float((a.float() - b.float()).abs().max()) for name, a, b in zip(OUTPUT_NAMES, got, expected)}


def format_diffs(diffs: dict[str, float]) -> str:
    return ", ".join(f"{name} {diff:.3g}" for name, diff in diffs.items())


def export_metadata(checkpoint: Path, meta: dict, trained, localizer) -> dict:
    """What a user needs to feed the exported model and read its outputs, and to rebuild it in PyTorch."""
    import torch

    from .. import __version__
    from ..models.resnet import backbone_layout

    size, classes = trained.input.crop_size, meta["classes"]
    stage = meta.get("stage", "cam")
    cam_method = getattr(localizer, "method", None)
    if stage == "tcam":
        localization = "foreground probability: softmax over the 2 segmentation logits, channel 1"
    else:
        localization = (f"{cam_method} map of the predicted class (argmax of class_logits), upsampled bilinearly "
                        "to the input size and min-max normalised per image")
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "tcam_ray_version": __version__,
        "torch_version": torch.__version__, "stage": stage, "cam_method": cam_method,
        "classes": classes, "num_classes": len(classes),
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW RGB",
                  "normalisation": "(pixel / 255 - mean) / std per channel", "mean": list(trained.input.mean),
                  "std": list(trained.input.std), "crop_size": size, "resize_size": trained.input.resize_size},
        "outputs": {OUTPUT_NAMES[0]: {"shape": ["batch", size, size], "range": [0, 1], "meaning": localization},
                    OUTPUT_NAMES[1]: {"shape": ["batch", len(classes)], "meaning": "class logits, in classes order"}},
        "backbone": backbone_layout(trained.model.arch, trained.model.layer3_stride, trained.model.layer4_stride),
        "decoder_widths": list(localizer.model.decoder.widths) if stage == "tcam" else None,
        "checkpoint": {"path": str(checkpoint), "epoch": meta.get("epoch"), "state_sha256": meta.get("state_sha256"),
                       "dataset_fingerprint": meta.get("dataset_fingerprint")},
    }
