"""Writing a localizer in each format with its metadata (the format's own place for it), and running it back.

- onnx: `metadata_props["tcam_ray"]`, built by the dynamo exporter from the same ExportedProgram;
- exported-program (`torch.export.save`, .pt2): the archive's extra file `tcam_ray.json`;
- torchscript (`torch.jit.trace`, .pt): the archive's extra file `tcam_ray.json`.

Every format takes a batch of any size; height and width are fixed at the recorded input size.
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .localizers import OUTPUT_NAMES, ExportError

INPUT_NAME = "images"
METADATA_KEY = "tcam_ray"  # ONNX metadata_props key
METADATA_FILE = "tcam_ray.json"  # extra file in .pt2 and TorchScript archives
FORMATS = ("onnx", "exported-program", "torchscript")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the exporter's, and the runtime the check runs on

Runner = Callable[[Tensor], tuple[Tensor, ...]]


def check_format(fmt: str) -> None:
    """A known format whose packages are installed."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "onnx":
        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise ExportError(f"--format onnx needs {', '.join(missing)}: pip install 'tcam-ray[export]'")


def write(localizer: nn.Module, example: Tensor, fmt: str, path: Path, metadata: dict) -> None:
    """Export `localizer` traced on `example` (batch >= 2, so the batch axis stays dynamic) into `path`."""
    check_format(fmt)
    text = json.dumps(metadata, indent=1)
    if fmt == "torchscript":
        with warnings.catch_warnings():  # PyTorch's deprecation of TorchScript, and shape checks fixed at H x W
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(localizer, (example,), check_trace=False)  # export_checkpoint checks it
            torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: text})
        return
    program = torch.export.export(localizer, (example,),
                                  dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    if fmt == "exported-program":
        torch.export.save(program, path, extra_files={METADATA_FILE: text})
    else:
        write_onnx(program, example, path, text)


def write_onnx(program: torch.export.ExportedProgram, example: Tensor, path: Path, text: str) -> None:
    import onnx

    onnx_program = torch.onnx.export(program, (example,), dynamo=True, verbose=False, input_names=[INPUT_NAME],
                                     output_names=list(OUTPUT_NAMES))
    proto = onnx_program.model_proto
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # the exporter names it after a symbol (s77)
    onnx.helper.set_model_props(proto, {METADATA_KEY: text})
    onnx.save(proto, str(path))


def read_metadata(path: str | Path, fmt: str) -> dict:
    """The metadata an exported file carries (see the module doc for where each format keeps it)."""
    check_format(fmt)
    path = Path(path)
    if fmt == "onnx":
        import onnx

        props = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
        text = props.get(METADATA_KEY)
    else:
        files = {METADATA_FILE: ""}
        if fmt == "torchscript":
            load_torchscript(path, files)
        else:
            torch.export.load(path, extra_files=files)
        text = files[METADATA_FILE] or None
    if text is None:
        raise ExportError(f"{path}: no tcam-ray metadata ({METADATA_KEY}); not exported by tcam-ray export")
    return json.loads(text)


def load_runner(path: Path, fmt: str) -> Runner:
    """images -> outputs (CPU tensors) of an exported file, run by onnxruntime, torch.export or TorchScript."""
    check_format(fmt)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda images: tuple(torch.from_numpy(np.asarray(out))
                                    for out in session.run(None, {INPUT_NAME: images.numpy()}))
    module = load_torchscript(path) if fmt == "torchscript" else torch.export.load(path).module()

    def run(images: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            return tuple(module(images))
    return run


def load_torchscript(path: Path, extra_files: dict | None = None) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PyTorch's deprecation of TorchScript
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files or {})
