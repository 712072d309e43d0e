"""Compiled ops and their exact references (plain PyTorch; never imports Ray)."""
from tcam_ray.ops._loader import OpBuildError
from tcam_ray.ops.build_info import build_info
from tcam_ray.ops.crf import PAPER_OP_SCALE, dense_crf_energies, dense_crf_energy, permutohedral_filter
from tcam_ray.ops.crf_reference import exact_dense_crf_energy, exact_gaussian_filter

__all__ = [
    "OpBuildError",
    "PAPER_OP_SCALE",
    "build_info",
    "dense_crf_energies",
    "dense_crf_energy",
    "exact_dense_crf_energy",
    "exact_gaussian_filter",
    "permutohedral_filter",
]
