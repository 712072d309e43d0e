"""Classification heads on an encoder's last feature map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WGAPHead(nn.Module):
    """Global average pooling then a linear layer; its CAM is relu(W_c · features)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C, h, w) -> logits (B, num_classes)."""
        return self.fc(F.adaptive_avg_pool2d(features, 1).flatten(1))

    def cam(self, features: Tensor, classes: Tensor) -> Tensor:
        """relu(W_c · features) for class `classes[b]` of each sample b: (B, C, h, w) -> (B, h, w).

        No bias: it is spatially constant and would only shift the map.
        """
        class_weights = self.fc.weight[classes.to(self.fc.weight.device)].to(features.dtype)  # (B, C)
        return torch.einsum("bc,bchw->bhw", class_weights, features).relu()
