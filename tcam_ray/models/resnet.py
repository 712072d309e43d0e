"""ResNet-18/34/50 encoders (torchvision architectures) returning every stage's features.

The encoder keeps torchvision's module names (conv1, bn1, layer1..layer4) so
torchvision state dicts load as they are (minus the ImageNet `fc`), and drops
the pooling and classification layers: a head (heads.py) or a decoder sits on
top of the returned feature maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torchvision.models import (
    ResNet,
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    WeightsEnum,
)
from torchvision.models.resnet import BasicBlock, Bottleneck

from tcam_ray.models.weights import load_encoder_weights, load_torchvision_weights


@dataclass(frozen=True)
class ResNetSpec:
    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]
    # V1 is what `torchvision.models.resnetXX(pretrained=True)` gave, as used by the paper's code.
    imagenet_weights: WeightsEnum


RESNET_SPECS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec(BasicBlock, (2, 2, 2, 2), ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": ResNetSpec(BasicBlock, (3, 4, 6, 3), ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": ResNetSpec(Bottleneck, (3, 4, 6, 3), ResNet50_Weights.IMAGENET1K_V1),
}
ENCODER_ARCHS: tuple[str, ...] = tuple(RESNET_SPECS)
PRETRAINED_SOURCES: tuple[str, ...] = ("imagenet",)


class ResNetEncoder(ResNet):
    """A torchvision ResNet without avgpool/fc whose forward returns the stage feature maps.

    forward(x) -> [stem (conv1+bn+relu, stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (32)]

    `layer4_stride=1` keeps layer4 at stride 16 (as WSOL CAM models do: a 224 input gives
    14x14 maps instead of 7x7); `layer3_stride=1` as well keeps layer3 and layer4 at stride 8
    (finer CAMs for small frames). The weights keep their shapes, so pretrained ones still load.
    """

    def __init__(self, arch: str, layer4_stride: int = 2, layer3_stride: int = 2) -> None:
        spec = _spec(arch)
        for name, stride in (("layer3_stride", layer3_stride), ("layer4_stride", layer4_stride)):
            if stride not in (1, 2):
                raise ValueError(f"{name} must be 1 or 2, got {stride}")
        super().__init__(spec.block, list(spec.layers))
        del self.avgpool, self.fc
        self.arch = arch
        widths = (64, 128, 256, 512)
        self.out_channels: list[int] = [64, *(w * spec.block.expansion for w in widths)]
        self.strides: list[int] = stage_strides(layer3_stride, layer4_stride)
        if layer3_stride == 1:
            unstride_first_block(self.layer3[0])
        if layer4_stride == 1:
            unstride_first_block(self.layer4[0])

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        stem = self.relu(self.bn1(self.conv1(x)))
        features = [stem]
        x = self.maxpool(stem)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


def stage_strides(layer3_stride: int = 2, layer4_stride: int = 2) -> list[int]:
    """Output strides of the encoder's stages [stem, layer1, ..., layer4]."""
    return [2, 4, 8, 8 * layer3_stride, 8 * layer3_stride * layer4_stride]


def backbone_layout(arch: str, layer3_stride: int = 2, layer4_stride: int = 2) -> dict:
    """How this encoder differs from torchvision's ResNet, as plain values for checkpoints' meta.json and
    exported models: a torchvision `resnetXX` loaded with these weights gives other outputs unless the
    first block of each stage with stride 1 is changed the same way (no dilation is added)."""
    strides = stage_strides(layer3_stride, layer4_stride)
    return {"arch": arch, "layer3_stride": layer3_stride, "layer4_stride": layer4_stride, "stage_strides": strides,
            "output_stride": strides[-1], "dilation": 1,
            "torchvision_change": "layerN[0].conv1 (BasicBlock) or conv2 (Bottleneck) and layerN[0].downsample[0] "
                                  "get stride 1 where layerN_stride is 1; avgpool and fc are dropped"}


def unstride_first_block(block: BasicBlock | Bottleneck) -> None:
    """Make a stage's first block keep its input resolution (its strided conv and shortcut)."""
    strided = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    strided.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def build_encoder(
    arch: str, pretrained: str | None = None, weights: str | Path | None = None, layer4_stride: int = 2,
    layer3_stride: int = 2,
) -> ResNetEncoder:
    """A ResNet encoder, randomly initialised unless `pretrained="imagenet"` or `weights=PATH`."""
    _spec(arch)
    if pretrained is not None and weights is not None:
        raise ValueError("give either pretrained='imagenet' or weights=PATH, not both")
    if pretrained is not None and pretrained not in PRETRAINED_SOURCES:
        raise ValueError(f"unknown pretrained source {pretrained!r}; valid: {list(PRETRAINED_SOURCES)} or None")
    encoder = ResNetEncoder(arch, layer4_stride, layer3_stride)
    if pretrained is not None:
        load_torchvision_weights(encoder, RESNET_SPECS[arch].imagenet_weights, arch)
    elif weights is not None:
        load_encoder_weights(encoder, weights)
    return encoder


def _spec(arch: str) -> ResNetSpec:
    if arch not in RESNET_SPECS:
        raise ValueError(f"unknown encoder arch {arch!r}; valid: {list(ENCODER_ARCHS)}")
    return RESNET_SPECS[arch]
