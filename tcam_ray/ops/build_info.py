"""What the compiled ops were built with, and whether it is current (never raises).

Loading the op means importing torch (seconds). Once it has loaded, its build facts are kept in the
user's cache (XDG_CACHE_HOME or ~/.cache, tcam-ray/ops/) under the extension file's path, size and
mtime and the running torch's version.py: while none of these change, and no GPU is visible (none to
report on), `build_info` answers from there without importing torch. Staleness against the sources and
the running torch is worked out afresh every time.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from tcam_ray.errors import TcamRayError
from tcam_ray.ops import _loader

RECORDED_KEYS = {"cpu", "cuda", "cuda_arch_list", "cuda_version", "torch_version", "source_hash"}


def build_info() -> dict:
    """Build facts of `tcam_ray._C_ops` for `tcam-ray doctor` and bug reports.

    Keys: built, cpu, cuda (kernels compiled in), cuda_arch_list, cuda_version,
    torch_version (built against), runtime_torch_version, source_hash (of the
    build), current_source_hash (of csrc/ops on disk; None outside a source
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
        "runtime_torch_version": _loader.running_torch_version(),
        "source_hash": None,
        "current_source_hash": _loader.current_source_hash(),
        "stale": False,
        "stale_reasons": [],
        "cuda_device": None,
        "cuda_device_supported": None,
        "error": None,
        "rebuild_command": _loader.REBUILD_COMMAND,
    }
    cache, gpu = build_cache_file(extension_file(), _loader.torch_version_file()), gpu_may_be_visible()
    recorded = read_recorded_build(cache) if cache and not gpu else None
    if recorded is None:
        try:
            recorded = _loader.import_extension().build_info()
        except _loader.OpBuildError as error:
            info["error"] = str(error)
            return info
        record_build(cache, recorded)
    info.update(recorded)
    info["built"] = True
    info["stale_reasons"] = _loader.stale_reasons(info)
    info["stale"] = bool(info["stale_reasons"])
    if gpu:
        add_cuda_device(info)
    return info


def add_cuda_device(info: dict) -> None:
    import torch

    if torch.cuda.is_available():
        capability = torch.cuda.get_device_capability()
        info["cuda_device"] = f"{torch.cuda.get_device_name()} (sm_{capability[0]}{capability[1]})"
        info["cuda_device_supported"] = bool(info["cuda"]) and _loader.arch_covers(info["cuda_arch_list"], capability)


def gpu_may_be_visible() -> bool:
    """False only where torch cannot see a GPU: Linux without NVIDIA (/dev/nvidia0...) or AMD (/dev/kfd) devices."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def extension_file() -> str | None:
    """The file `import tcam_ray._C_ops` would load (None: not built)."""
    spec = importlib.util.find_spec(_loader.EXTENSION)
    return spec.origin if spec is not None else None


def build_cache_file(extension: str | None, torch_version: Path | None) -> Path | None:
    """Where the facts of this extension file (path, size, mtime) under this torch (its version.py) are kept."""
    if extension is None or torch_version is None:
        return None
    try:
        stat = os.stat(extension)
        torch_release = torch_version.read_bytes()
    except OSError:
        return None
    key = hashlib.sha256()
    for part in (extension, stat.st_size, stat.st_mtime_ns, torch_release):
        key.update(repr(part).encode())
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_root / "tcam-ray" / "ops" / f"{Path(extension).name}.{key.hexdigest()[:16]}.json"


def read_recorded_build(cache: Path) -> dict | None:
    try:
        recorded = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) and RECORDED_KEYS <= recorded.keys() else None


def record_build(cache: Path | None, facts: dict) -> None:
    """Keep the facts of a build that loaded; the cache is an optimisation, so a write that fails is skipped."""
    if cache is None:
        return
    from tcam_ray.io import atomic_write_text

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(dict(facts)))
    except (OSError, TcamRayError):
        pass
