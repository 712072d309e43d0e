"""Compiled ops and their exact references (plain PyTorch; never imports Ray).

`import tcam_ray.ops` does not import torch: the op and reference names load their module on first use.
"""
from __future__ import annotations

import importlib

from tcam_ray.ops._loader import OpBuildError
from tcam_ray.ops.build_info import build_info

_LAZY = {
    "PAPER_OP_SCALE": "crf", "dense_crf_energies": "crf", "dense_crf_energy": "crf", "permutohedral_filter": "crf",
    "exact_dense_crf_energy": "crf_reference", "exact_gaussian_filter": "crf_reference",
    "seed_labels": "seeds", "seed_pixels": "seeds",
}

__all__ = [
    "OpBuildError", "PAPER_OP_SCALE", "build_info", "dense_crf_energies", "dense_crf_energy", "exact_dense_crf_energy",
    "exact_gaussian_filter", "permutohedral_filter", "seed_labels", "seed_pixels",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
