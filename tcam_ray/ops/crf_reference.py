"""Exact dense Gaussian filtering, O(P^2): the ground truth for the lattice op (small frames only)."""
from __future__ import annotations

import torch

# Query points per chunk: bounds the (N, chunk, P) float64 affinity block.
_CHUNK = 1024


def exact_gaussian_filter(values: torch.Tensor, features: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """out[n, k, i] = sum_j exp(-|F[n, :, i] - F[n, :, j]|^2 / 2) V[n, k, j], self term (weight 1) included.

    Same signature as `permutohedral_filter` (values (N, K, P), features
    (N, D, P) -> (N, K, P)); `reverse` is accepted for symmetry and has no
    effect (the exact affinity is symmetric). Computed in float64 and
    returned in the dtype of `values`.
    """
    del reverse
    points = features.transpose(1, 2).double()  # (N, P, D)
    dense_values = values.double()
    chunks = []
    for start in range(0, points.shape[1], _CHUNK):
        query = points[:, start : start + _CHUNK]
        affinity = torch.exp(-0.5 * torch.cdist(query, points).square())  # (N, chunk, P)
        chunks.append(torch.einsum("nkp,ncp->nkc", dense_values, affinity))
    return torch.cat(chunks, dim=2).to(values.dtype)


def exact_dense_crf_energy(probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """-sum_k S_k^T W S_k / N with the exact affinity W (autograd gives -2 W S / N)."""
    affinity_probs = _ExactFilter.apply(probs, features)
    return -(probs * affinity_probs).sum() / probs.shape[0]


class _ExactFilter(torch.autograd.Function):
    """W S with the exact (symmetric) W; its gradient is W applied to the incoming gradient."""

    @staticmethod
    def forward(ctx, probs, features):
        ctx.save_for_backward(features)
        return exact_gaussian_filter(probs, features)

    @staticmethod
    def backward(ctx, grad):
        (features,) = ctx.saved_tensors
        return exact_gaussian_filter(grad, features), None
