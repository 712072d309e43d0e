"""Loads the compiled ops extension `tcam_ray._C_ops` and refuses a missing or stale build.

There is deliberately no pure-Python fallback: the exact reference is O(P^2)
and would make training silently hundreds of times slower.

Importing this module does not import torch (`tcam-ray doctor` reads build facts without it).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

EXTENSION = "tcam_ray._C_ops"
REBUILD_COMMAND = "pip install --no-build-isolation -e .   (or, in a source checkout: python setup.py build_ext --inplace)"
SOURCE_SUFFIXES = {".h", ".cuh", ".cpp", ".cu"}


class OpBuildError(RuntimeError):
    """The compiled op is missing, stale, or lacks the kernel a call needs."""


def sources_dir() -> Path | None:
    """csrc/ops of a source checkout (editable install), or None in an installed wheel."""
    candidate = Path(__file__).resolve().parents[2] / "csrc" / "ops"
    return candidate if candidate.is_dir() else None


def current_source_hash() -> str | None:
    """Hash of the op's sources on disk; the same recipe as setup.py's source_hash()."""
    folder = sources_dir()
    if folder is None:
        return None
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in SOURCE_SUFFIXES:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def torch_version_file() -> Path | None:
    """torch/version.py of the torch this interpreter would import (None: torch is not installed)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "version.py"


def running_torch_version() -> str:
    """torch.__version__, read from torch/version.py while torch is not imported (importing it takes seconds)."""
    if "torch" not in sys.modules:
        path = torch_version_file()
        try:
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
                    return ast.literal_eval(node.value)
        except (AttributeError, OSError, SyntaxError, ValueError):
            pass  # an unusual torch install: ask torch itself
    import torch

    return torch.__version__


def stale_reasons(info: dict) -> list[str]:
    """Why a loaded build no longer matches its sources or the running torch (empty: fresh)."""
    reasons = []
    current = current_source_hash()
    if current is not None and current != info["source_hash"]:
        reasons.append(f"csrc/ops changed since the build (built {info['source_hash']}, sources now {current})")
    running = running_torch_version()
    if info["torch_version"] != running:
        reasons.append(f"built against torch {info['torch_version']}, running torch {running}")
    return reasons


def import_extension() -> ModuleType:
    try:
        import torch  # noqa: F401  the extension links against libtorch, which torch's import loads

        return importlib.import_module(EXTENSION)
    except ImportError as error:
        raise OpBuildError(
            f"The compiled ops ({EXTENSION}) are not built or cannot be loaded: {error}. "
            f"Rebuild it with: {REBUILD_COMMAND}"
        ) from error


@functools.lru_cache(maxsize=None)
def load_extension() -> ModuleType:
    """Imports the extension (registering torch.ops.tcam_ray.*) after checking it is current."""
    module = import_extension()
    reasons = stale_reasons(module.build_info())
    if reasons:
        raise OpBuildError(
            "The compiled ops build is stale: " + "; ".join(reasons) + f". Rebuild it with: {REBUILD_COMMAND}"
        )
    return module


def arch_covers(arch_list: str, capability: tuple[int, int]) -> bool:
    """Whether a TORCH_CUDA_ARCH_LIST-style string runs on a GPU of this compute capability.

    SASS for X.Y runs on X.Z with Z >= Y; PTX for X.Y is JIT-compiled for any
    capability >= X.Y.
    """
    major, minor = capability
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        arch_major, arch_minor = (int(part) for part in entry.removesuffix("+PTX").split(".")[:2])
        if arch_major == major and arch_minor <= minor:
            return True
        if ptx and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


@functools.lru_cache(maxsize=None)
def check_device(device: torch.device) -> None:
    """Clear errors for a CUDA call the build cannot serve (instead of the dispatcher's)."""
    if device.type != "cuda":
        return
    import torch

    info = load_extension().build_info()
    if not info["cuda"]:
        raise OpBuildError(
            "The CRF op was built without CUDA kernels but got CUDA tensors. Rebuild it where nvcc and a CUDA "
            f"build of torch are present (or with FORCE_CUDA=1): {REBUILD_COMMAND}"
        )
    capability = torch.cuda.get_device_capability(device)
    if not arch_covers(info["cuda_arch_list"], capability):
        raise OpBuildError(
            f"The CRF op's CUDA kernels were built for {info['cuda_arch_list']!r}, which does not cover this GPU "
            f"(compute capability {capability[0]}.{capability[1]}). Rebuild with "
            f"TORCH_CUDA_ARCH_LIST='{capability[0]}.{capability[1]}': {REBUILD_COMMAND}"
        )
