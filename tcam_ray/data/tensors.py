"""Decoded uint8 frames as the model's input, on the worker's device."""
from __future__ import annotations

import torch


def normalise(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float normalised, channels-last in memory."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
