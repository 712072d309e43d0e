"""`tcam-ray export CHECKPOINT --format onnx|exported-program|torchscript --out FILE`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

WHERE_METADATA = {"onnx": "ONNX metadata_props['tcam_ray']", "exported-program": "extra file tcam_ray.json",
                  "torchscript": "extra file tcam_ray.json"}


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder of either stage (e.g. "
                                               "RUN/checkpoints/best-corloc).", show_default=False)],
    format_: Annotated[str, typer.Option("--format", help="onnx, exported-program (torch.export, .pt2) or "
                                         "torchscript (.pt).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The file to write.", show_default=False)],
    cam_method: Annotated[Optional[str], typer.Option("--cam-method", help="Stage 1: cam, gradcampp or layercam; "
                                                      "default the checkpoint's cam.method.",
                                                      show_default=False)] = None,
):
    """Export a checkpoint's model (either stage) as ONNX, an ExportedProgram or TorchScript.

    Input: float32 images (N, 3, S, S), normalised as in training (S: the checkpoint's input.crop_size). Outputs: the localization map (N, S, S) in [0, 1] and the class logits (N, C). The map is the CAM of the predicted class (stage 1) or the foreground probability (stage 2).

    The file records the input size, mean/std, classes, CAM method and backbone strides. It is run on a random batch and compared with the PyTorch model (max abs difference per output).
    """
    from tcam_ray.export import export_checkpoint

    report = export_checkpoint(checkpoint, format_, out, cam_method=cam_method)
    meta = report.metadata
    size = meta["input"]["crop_size"]
    what = f"{meta['cam_method']} map" if meta["stage"] == "cam" else "foreground map"
    typer.echo(f"wrote {report.out} ({report.fmt}, stage {meta['stage']}, {what}; input (N, 3, {size}, {size}) "
               f"float32, mean {meta['input']['mean']}, std {meta['input']['std']}; output stride "
               f"{meta['backbone']['output_stride']}) in {report.seconds:.1f} s")
    diffs = ", ".join(f"{name} {diff:.2e}" for name, diff in report.max_abs_diff.items())
    typer.echo(f"check against PyTorch on random input (batch {report.check_batch}), max abs diff: {diffs}")
    typer.echo(f"metadata: {WHERE_METADATA[report.fmt]}")
