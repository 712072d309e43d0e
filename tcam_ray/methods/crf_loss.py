"""Dense CRF losses of TCAM (bilateral, per frame) and CoLo-CAM (colour, across the frames of a clip).

Both are `weight * (-sum_k S_k^T W S_k / N)` (Tang et al. 2018) with W the
permutohedral-lattice Gaussian affinity of `tcam_ray.ops`, whose scale is the
paper's op's (about 0.56x the exact dense sum; see tcam_ray/ops/crf.py), so the
paper's weights (e.g. 2e-9 for the bilateral loss) carry over unchanged.
Images are raw RGB in [0, 255] on any device; nothing is copied to the host.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcam_ray.ops.crf import dense_crf_energies, dense_crf_energy


def bilateral_features(images: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """(x/sigma_xy, y/sigma_xy, r/sigma_rgb, g/sigma_rgb, b/sigma_rgb) of images (N, 3, H, W) -> (N, 5, H*W)."""
    n, _, height, width = images.shape
    # Written in place into one buffer (few large ops: each costs a fork/join of the thread pool).
    features = torch.empty(n, 5, height, width, device=images.device, dtype=torch.float32)
    cols = torch.arange(width, device=images.device, dtype=torch.float32).div_(sigma_xy)
    rows = torch.arange(height, device=images.device, dtype=torch.float32).div_(sigma_xy)
    features[:, 0] = cols
    features[:, 1] = rows[:, None]
    if images.dtype == torch.float32:
        torch.div(images, sigma_rgb, out=features[:, 2:])
    else:
        features[:, 2:] = images.float() / sigma_rgb
    return features.reshape(n, 5, height * width)


def colour_features(frames: torch.Tensor, sigma_rgb: float) -> torch.Tensor:
    """rgb/sigma_rgb of the pixels of all frames of each clip, frames (N, T, 3, H, W) -> (N, 3, T*H*W)."""
    n, t, c, height, width = frames.shape
    return (frames.float() / sigma_rgb).permute(0, 2, 1, 3, 4).reshape(n, c, t * height * width)


def downscale(images: torch.Tensor, probs: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's `scale`: images nearest-neighbour, probabilities bilinearly resized."""
    if scale == 1.0:
        return images, probs
    images = F.interpolate(images.float(), scale_factor=scale, mode="nearest", recompute_scale_factor=False)
    probs = F.interpolate(probs, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)
    return images, probs


def _check_pair(images: torch.Tensor, probs: torch.Tensor, image_dims: int, name: str) -> None:
    shape_text = "(N, 3, H, W)" if image_dims == 4 else "(N, T, 3, H, W)"
    if images.dim() != image_dims or images.shape[-3] != 3:
        raise ValueError(f"{name}: images must have shape {shape_text}, got {tuple(images.shape)}")
    if probs.dim() != image_dims or probs.shape[:-3] != images.shape[:-3] or probs.shape[-2:] != images.shape[-2:]:
        expected = shape_text.replace("3", "K")
        raise ValueError(
            f"{name}: probs must have shape {expected} matching images {tuple(images.shape)}, got {tuple(probs.shape)}"
        )


class DenseCRFLoss(nn.Module):
    """TCAM's bilateral CRF loss: weight * (-sum_k S_k^T W S_k / N) on (x, y, r, g, b) features.

    forward(images, probs): images (N, 3, H, W) raw RGB in [0, 255] (any
    dtype), probs (N, K, H, W) softmax output. With scale < 1 both are
    downscaled first and sigma_xy is multiplied by scale, as in the paper's
    code, so sigma_xy stays in full-resolution pixels.
    """

    def __init__(self, weight: float = 2e-9, sigma_rgb: float = 15.0, sigma_xy: float = 100.0, scale: float = 1.0):
        super().__init__()
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"DenseCRFLoss: scale must be in (0, 1], got {scale}")
        self.weight, self.sigma_rgb, self.sigma_xy, self.scale = weight, sigma_rgb, sigma_xy, scale

    def forward(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        _check_pair(images, probs, 4, "DenseCRFLoss")
        images, probs = downscale(images, probs, self.scale)
        features = bilateral_features(images, self.sigma_rgb, self.sigma_xy * self.scale)
        return self.weight * dense_crf_energy(probs.flatten(2), features)


class MultiFrameColourCRFLoss(nn.Module):
    """CoLo-CAM's colour CRF: the CRF energy over the pixels of all T frames of a clip as one point set.

    forward(frames, probs): frames (N, T, 3, H, W) raw RGB in [0, 255], probs
    (N, T, K, H, W). Features are rgb/sigma_rgb only (no position), so pixels
    of similar colour attract each other across frames. The loss is the mean
    over the N clips of `weight * E_c`, or with `adaptive` (CoLo-CAM's
    default, its "adaptive" lambda style) of `weight * E_c / |E_c|` with
    |E_c| held constant: every clip weighs `weight` whatever its size or
    contrast, and only the direction of its gradient is the energy's.
    """

    def __init__(self, weight: float, sigma_rgb: float = 15.0, scale: float = 1.0, adaptive: bool = False):
        super().__init__()
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"MultiFrameColourCRFLoss: scale must be in (0, 1], got {scale}")
        self.weight, self.sigma_rgb, self.scale, self.adaptive = weight, sigma_rgb, scale, adaptive

    def forward(self, frames: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        _check_pair(frames, probs, 5, "MultiFrameColourCRFLoss")
        n, t = frames.shape[:2]
        flat_frames, flat_probs = downscale(frames.flatten(0, 1), probs.flatten(0, 1), self.scale)
        frames = flat_frames.reshape(n, t, *flat_frames.shape[1:])
        probs = flat_probs.reshape(n, t, *flat_probs.shape[1:])
        clip_probs = probs.permute(0, 2, 1, 3, 4).flatten(2)  # (N, K, T*H*W), same point order as the features
        energies = dense_crf_energies(clip_probs, colour_features(frames, self.sigma_rgb))
        if self.adaptive:
            energies = energies / energies.detach().abs().clamp_min(torch.finfo(energies.dtype).tiny)
        return self.weight * energies.mean()
