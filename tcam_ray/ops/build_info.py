"""What the compiled CRF op was built with, and whether it is current (never raises)."""
from __future__ import annotations

import torch

from tcam_ray.ops import _loader


def build_info() -> dict:
    """Build facts of `tcam_ray._C_crf` for `tcam-ray doctor` and bug reports.

    Keys: built, cpu, cuda (kernels compiled in), cuda_arch_list, cuda_version,
    torch_version (built against), runtime_torch_version, source_hash (of the
    build), current_source_hash (of csrc/crf on disk; None outside a source
    checkout), stale, stale_reasons, cuda_device (name and capability of the
    current GPU, or None), cuda_device_supported, error, rebuild_command.
    """
    info = {
        "built": False,
        "cpu": False,
        "cuda": False,
        "cuda_arch_list": "",
        "cuda_version": "",
        "torch_version": None,
        "runtime_torch_version": torch.__version__,
        "source_hash": None,
        "current_source_hash": _loader.current_source_hash(),
        "stale": False,
        "stale_reasons": [],
        "cuda_device": None,
        "cuda_device_supported": None,
        "error": None,
        "rebuild_command": _loader.REBUILD_COMMAND,
    }
    try:
        module = _loader.import_extension()
    except _loader.OpBuildError as error:
        info["error"] = str(error)
        return info
    info.update(module.build_info())
    info["built"] = True
    info["stale_reasons"] = _loader.stale_reasons(info)
    info["stale"] = bool(info["stale_reasons"])
    if torch.cuda.is_available():
        capability = torch.cuda.get_device_capability()
        info["cuda_device"] = f"{torch.cuda.get_device_name()} (sm_{capability[0]}{capability[1]})"
        info["cuda_device_supported"] = bool(info["cuda"]) and _loader.arch_covers(info["cuda_arch_list"], capability)
    return info
