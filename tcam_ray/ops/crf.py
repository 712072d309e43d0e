"""The permutohedral Gaussian filter op and the dense CRF energy built on it.

Normalisation (what a CRF weight such as the paper's 2e-9 multiplies)
--------------------------------------------------------------------
`permutohedral_filter` computes the lattice approximation of

    out[n, k, i] = sum_j exp(-|F[n, :, i] - F[n, :, j]|^2 / 2) V[n, k, j]

with the arithmetic of Kraehenbuehl's densecrf lattice, which the TCAM code
calls through Tang's rloss `bilateralfilter` (same elevation scale, same
[1/2, 1, 1/2] blur, same slice factor 1/(1 + 2^-D)). Like that op it is NOT
normalised to the exact sum: measured against the exact dense sum
(`crf_reference.exact_gaussian_filter`) it gives

* about LATTICE_TO_EXACT_5D (0.56) of the exact CRF energy for the 5-D
  bilateral features on natural images with sigma_rgb 15 and sigma_xy 100
  (cosine of W S with the exact W S: 0.998), which is the ratio the issue
  reports for the paper's op;
* a point's own contribution weighs about 0.46 on average for D = 5
  (`SELF_WEIGHT_5D`, measured on isolated points) instead of 1.

Because the arithmetic is the paper's, the energy needs no rescaling to make
the paper's weights mean the same thing: `PAPER_OP_SCALE` (= 1) is the
explicit factor between our lattice output and the paper's op output, applied
in `dense_crf_energy`. Tests pin both the measured ratio to the exact energy
and this equivalence (tests/test_crf_op.py::test_paper_normalisation).
"""
from __future__ import annotations

import math
import struct

import torch

from tcam_ray.ops import _loader

# Our lattice output / the paper's op output: 1 because the arithmetic is the same.
PAPER_OP_SCALE = 1.0
# Our (and the paper's) CRF energy / the exact dense CRF energy, 5-D bilateral
# features, natural images (grace_hopper crops, sigma_rgb 15, sigma_xy 100 at
# 224x224, measured at 64x64 with sigma_xy scaled by 64/224).
LATTICE_TO_EXACT_5D = 0.56
# Feature dimensions the compiled op is instantiated for (build_info()["max_feature_dim"]).
MAX_FEATURE_DIM = 16

# Mean weight of an isolated point's own value in its output, D = 5 (exact: 1).
SELF_WEIGHT_5D = 0.46

# The CPU kernel's bound on |elevated lattice coordinate| (kCpuKeyLimit in csrc/crf/permutohedral.h).
CPU_KEY_LIMIT = 30000.0
# Relative error of the float32 elevation against exact arithmetic: at most D + 2 <= 18
# roundings of 2^-24 (about 1.1e-6); the quick bound keeps ten times that as margin.
_ELEVATION_ROUNDING = 1e-5


def _op():
    _loader.load_extension()
    _register_python_parts()
    return torch.ops.tcam_ray.permutohedral_filter.default


def permutohedral_filter(values: torch.Tensor, features: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Gaussian filtering of values (N, K, P) by features (N, D, P), 1 <= D <= 16; returns (N, K, P).

    Features are in units of their standard deviation (divide by sigma
    first); they must be finite and small enough for the lattice (elevated
    coordinates within +-CPU_KEY_LIMIT: |feature| below about 3000 for
    D = 5). On the CPU other features raise RuntimeError; the CUDA kernel,
    which cannot report them without a device sync, places their points at
    the origin. One lattice is built per item and filters all K channels.
    float32 only (under autocast the op casts to float32); CPU or CUDA
    tensors, no host copies. `reverse=True` applies the transposed filter
    (the blur directions in reverse order), which is what its gradient uses;
    features get no gradient.
    """
    if not isinstance(values, torch.Tensor) or not isinstance(features, torch.Tensor):
        raise TypeError("permutohedral_filter: `values` and `features` must be torch.Tensor")
    _check_filter_inputs(values, features)
    op = _op()
    _loader.check_device(values.device)
    return op(values, features, reverse)


def _check_filter_inputs(values: torch.Tensor, features: torch.Tensor) -> None:
    """The compiled op checks these too; checking them here first gives the same errors
    where a C++ exception cannot cross into Python (seen: torch 2.11 with a gcc 13 build
    crashed instead of raising)."""
    def fail(message: str):
        raise RuntimeError(f"permutohedral_filter: {message}")

    if values.dim() != 3:
        fail(f"`values` must have shape (N, K, P), got {list(values.shape)}")
    if features.dim() != 3:
        fail(f"`features` must have shape (N, D, P), got {list(features.shape)}")
    n, _, p = values.shape
    if features.shape[0] != n or features.shape[2] != p:
        fail(f"`features` must have shape (N, D, P) = ({n}, D, {p}), got {list(features.shape)}")
    if not 1 <= features.shape[1] <= MAX_FEATURE_DIM:
        fail(f"`features` dimension D (dim 1) must be in [1, {MAX_FEATURE_DIM}], got {features.shape[1]}")
    for name, tensor in (("values", values), ("features", features)):
        if tensor.dtype != torch.float32:
            fail(f"`{name}` must be float32, got {tensor.dtype}")
    if values.device != features.device:
        fail(f"`values` and `features` must be on one device, got {values.device} and {features.device}")
    if features.device.type == "cpu" and features.numel():
        _check_cpu_features(features, fail)


def _check_cpu_features(features: torch.Tensor, fail) -> None:
    """Features must be finite, with every elevated coordinate within +-CPU_KEY_LIMIT (locate_block's test).

    A bound from each dimension's largest |feature| clears sensible features in one pass; only
    features that it cannot clear are elevated exactly. Not on CUDA: its kernel places such points
    at the origin instead of failing, and raising here would cost a device sync per call.
    """
    features = features.detach()
    # amax and amin (nan if any is nan) need no temporary: about 10x faster than isfinite().all()
    largest = torch.maximum(features.amax(dim=(0, 2)), -features.amin(dim=(0, 2))).tolist()
    if _elevation_bound(largest) < CPU_KEY_LIMIT * (1.0 - _ELEVATION_ROUNDING):
        return
    if not bool(torch.isfinite(features).all()):
        fail("`features` has non-finite values")
    largest_elevated = _largest_elevated_coordinate(features)
    if not largest_elevated < CPU_KEY_LIMIT:
        fail(
            f"`features` has values too large for the lattice (elevated lattice coordinates up to "
            f"{largest_elevated:.6g}, the limit is +-{CPU_KEY_LIMIT:g}); divide the features by their "
            "standard deviations (sigma) before filtering"
        )


def _elevation_scales(dim: int) -> list[float]:
    """make_elevation_scales<D> (csrc/crf/permutohedral.h), with its float32 roundings."""
    inv_std_dev = _float32(math.sqrt(2.0 / 3.0) * (dim + 1))
    return [_float32(1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev) for i in range(dim)]


def _float32(number: float) -> float:
    return struct.unpack("f", struct.pack("f", number))[0]


def _elevation_bound(largest_features: list[float]) -> float:
    """Bound on |elevated coordinate| from each dimension's largest |feature| (exact arithmetic)."""
    terms = [scale * largest for scale, largest in zip(_elevation_scales(len(largest_features)), largest_features)]
    # coordinate 0 sums every term; coordinate j sums the terms above j and j times term j
    bounds = [sum(terms)] + [sum(terms[j:]) + j * terms[j - 1] for j in range(1, len(terms) + 1)]
    return max(bounds)


def _largest_elevated_coordinate(features: torch.Tensor) -> float:
    """max |elevated coordinate| with the kernel's float32 operations in its order (locate_block); nan, inf kept.

    Each product is its own op: an `alpha` other than +-1 would fuse into an FMA and round differently.
    """
    scales = _elevation_scales(features.shape[1])
    partial = torch.zeros_like(features[:, 0])
    largest = torch.zeros((), dtype=features.dtype)
    for j in range(features.shape[1], 0, -1):
        scaled = features[:, j - 1] * scales[j - 1]
        largest = torch.maximum(largest, (partial - scaled * float(j)).abs().amax())
        partial += scaled
    return float(torch.maximum(largest, partial.abs().amax()))


def dense_crf_energy(probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Dense CRF energy -sum_k S_k^T W S_k / N (Tang et al. 2018) of probs S (N, K, P); scalar.

    W is the lattice Gaussian affinity of `features` (N, D, P) (see the module
    docstring for its scale). The gradient is -2 W S / N, as in the paper's
    code. Runs in float32 whatever the autocast state or input dtype; the
    gradient flows back in the dtype of `probs`.
    """
    return dense_crf_energies(probs, features).mean()


def dense_crf_energies(probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(N,) the dense CRF energy -sum_k S_k^T W S_k of each item (see `dense_crf_energy`); gradient -2 W S."""
    _check_energy_inputs(probs, features)
    with torch.autocast(device_type=probs.device.type, enabled=False):
        return _DenseCRFEnergies.apply(probs.float(), features.float())


def _check_energy_inputs(probs: torch.Tensor, features: torch.Tensor) -> None:
    if probs.dim() != 3:
        raise ValueError(f"dense_crf_energy: `probs` must have shape (N, K, P), got {tuple(probs.shape)}")
    if features.dim() != 3 or features.shape[0] != probs.shape[0] or features.shape[2] != probs.shape[2]:
        raise ValueError(
            f"dense_crf_energy: `features` must have shape (N, D, P) = ({probs.shape[0]}, D, {probs.shape[2]}), "
            f"got {tuple(features.shape)}"
        )
    for name, tensor in (("probs", probs), ("features", features)):
        if not tensor.is_floating_point():
            raise TypeError(f"dense_crf_energy: `{name}` must be a floating-point tensor, got {tensor.dtype}")


class _DenseCRFEnergies(torch.autograd.Function):
    @staticmethod
    def forward(ctx, probs, features):
        # W S is computed once here and reused by backward (no second filtering).
        affinity_probs = permutohedral_filter(probs, features)
        if PAPER_OP_SCALE != 1.0:
            affinity_probs = affinity_probs * PAPER_OP_SCALE
        ctx.save_for_backward(affinity_probs)
        return -(probs * affinity_probs).sum(dim=(1, 2))

    @staticmethod
    def backward(ctx, grad_energies):
        (affinity_probs,) = ctx.saved_tensors
        # one pass over the (N, K, P) tensor: the per-item factors are formed first
        return affinity_probs * (-2.0 * grad_energies)[:, None, None], None


_registered = False


def _register_python_parts() -> None:
    """Fake (meta) kernel, autograd and autocast rules of the C++ op, registered once."""
    global _registered
    if _registered:
        return
    _registered = True
    name = "tcam_ray::permutohedral_filter"
    torch.library.register_fake(name, _fake_filter)
    torch.library.register_autograd(name, _filter_backward, setup_context=_filter_setup_context)
    for device_type in ("cpu", "cuda"):
        torch.library.register_autocast(name, device_type, torch.float32)


def _fake_filter(values, features, reverse=False):
    torch._check(values.dim() == 3 and features.dim() == 3, lambda: "permutohedral_filter: expects 3-D tensors")
    torch._check(values.shape[0] == features.shape[0] and values.shape[2] == features.shape[2])
    return torch.empty_like(values, memory_format=torch.contiguous_format)


def _filter_setup_context(ctx, inputs, output):
    _, features, reverse = inputs
    ctx.save_for_backward(features)
    ctx.reverse = reverse


def _filter_backward(ctx, grad):
    (features,) = ctx.saved_tensors
    grad_values = torch.ops.tcam_ray.permutohedral_filter(grad.contiguous(), features, not ctx.reverse)
    return grad_values, None, None
