"""The compiled CPU seed sampler (csrc/ops/seed_sampler_cpu.cpp) of the stage-2 pseudo-labels.

Its rule and laws are tcam_ray/methods/pseudo_labels.py's, whose batched torch steps serve CUDA tensors
and are the reference the tests hold it to. Both calls take maps (B, h, w) uint8 levels or float32 in
[0, 1] and roi (B, h, w) bool on the CPU; one seed drawn from `generator` makes the draws reproducible.
"""
from __future__ import annotations

import torch

from tcam_ray.ops import _loader

SEED_RANGE = 2**62  # the 64-bit seed drawn from the caller's generator


def seed_pixels(maps: torch.Tensor, roi: torch.Tensor, max_p: float, min_p: float, n_fg: int, n_bg: int, ksz: int,
                weighted: bool, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, classes) int64: flat batch indices, ascending, of the pixels inside a foreground (class 1) or a
    background (class 0) seed square but not both."""
    return _op("seed_pixels")(*_arguments(maps, roi, max_p, min_p, n_fg, n_bg, ksz, weighted, generator))


def seed_labels(maps: torch.Tensor, roi: torch.Tensor, max_p: float, min_p: float, n_fg: int, n_bg: int, ksz: int,
                weighted: bool, generator: torch.Generator | None = None, ignore_index: int = -100) -> torch.Tensor:
    """The same seeds as a (B, h, w) int64 label image: 1 foreground, 0 background, ignore_index elsewhere."""
    arguments = _arguments(maps, roi, max_p, min_p, n_fg, n_bg, ksz, weighted, generator)
    return _op("seed_labels")(*arguments, int(ignore_index))


def _op(name: str):
    _loader.load_extension()
    return getattr(torch.ops.tcam_ray, name)


def _arguments(maps, roi, max_p, min_p, n_fg, n_bg, ksz, weighted, generator) -> tuple:
    seed = int(torch.randint(SEED_RANGE, (1,), generator=generator))
    return (maps.contiguous(), roi.contiguous(), float(max_p), float(min_p), int(n_fg), int(n_bg), int(ksz),
            bool(weighted), seed)
