"""The stage-1 CAM classifier: a ResNet encoder and a WGAP head."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from tcam_ray.models.heads import WGAPHead
from tcam_ray.models.resnet import ResNetEncoder, build_encoder


class CamClassifier(nn.Module):
    """encoder(x) -> stage features; head(last features) -> logits.

    Input: float, normalised NCHW images (channels-last memory format works as well).
    """

    def __init__(self, encoder: ResNetEncoder, head: WGAPHead) -> None:
        super().__init__()
        if encoder.out_channels[-1] != head.in_channels:
            raise ValueError(
                f"head expects {head.in_channels} channels, encoder's last stage gives {encoder.out_channels[-1]}"
            )
        self.encoder = encoder
        self.head = head

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def features(self, x: Tensor) -> list[Tensor]:
        """Stage feature maps [stem, layer1, ..., layer4] (strides `encoder.strides`)."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.features(x)[-1])


def build_classifier(
    arch: str,
    num_classes: int,
    pretrained: str | None = None,
    weights: str | Path | None = None,
    layer4_stride: int = 2,
    layer3_stride: int = 2,
) -> CamClassifier:
    """A CAM classifier; `pretrained`/`weights` initialise the encoder (see build_encoder)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    encoder = build_encoder(arch, pretrained=pretrained, weights=weights, layer4_stride=layer4_stride,
                            layer3_stride=layer3_stride)
    return CamClassifier(encoder, WGAPHead(encoder.out_channels[-1], num_classes))
