"""The TCAM U-Net decoder: encoder stage features -> 2-channel (background, foreground) logits.

One block per encoder stage below the last, from layer4 down to the stem:
upsample to the skip's resolution, concatenate the skip, two 3x3
conv-BN-ReLU. A last block (no skip) goes from the stem's stride 2 to the
input resolution, and a 1x1 convolution gives the logits. Upsampling targets
the skip's actual size rather than a fixed factor of 2, so inputs that are
not multiples of 32 work, and a stage at the same stride as the one above
(layer4 with `layer4_stride=1`) is joined without resampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcam_ray.models.resnet import ResNetEncoder

DEFAULT_DECODER_WIDTHS: tuple[int, ...] = (256, 128, 64, 32, 16)
NUM_SEG_CLASSES = 2  # background, foreground


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample to the skip's size (when different), concatenate the skip, two conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            ConvBNReLU(in_channels + skip_channels, out_channels), ConvBNReLU(out_channels, out_channels)
        )

    def forward(self, x: Tensor, size: tuple[int, int], skip: Tensor | None = None) -> Tensor:
        x = resize(x, size)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNetDecoder(nn.Module):
    """U-Net decoder over the encoder's stage features [stem, layer1, ..., layer4].

    forward(features, output_size) -> logits (B, 2, *output_size), channel 0 background, 1 foreground.
    `encoder_channels`/`encoder_strides` are the encoder's `out_channels`/`strides`;
    `widths` has one entry per stage (len(encoder_channels)): the first len-1 for the
    skip blocks from the deepest stage up, the last for the full-resolution block.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        widths: Sequence[int] = DEFAULT_DECODER_WIDTHS,
    ) -> None:
        super().__init__()
        _check_encoder(encoder_channels, encoder_strides)
        if len(widths) != len(encoder_channels) or min(widths) < 1:
            raise ValueError(
                f"decoder widths must be {len(encoder_channels)} positive ints (one per encoder stage), "
                f"got {tuple(widths)}"
            )
        self.encoder_channels = tuple(encoder_channels)
        self.encoder_strides = tuple(encoder_strides)
        self.widths = tuple(widths)

        skips = self.encoder_channels[-2::-1]  # layer3, layer2, layer1, stem
        in_channels = (self.encoder_channels[-1], *self.widths[: len(skips) - 1])
        self.blocks = nn.ModuleList(
            DecoderBlock(c_in, c_skip, c_out) for c_in, c_skip, c_out in zip(in_channels, skips, self.widths)
        )
        self.full_res_block = DecoderBlock(self.widths[-2], 0, self.widths[-1])
        self.seg_head = nn.Conv2d(self.widths[-1], NUM_SEG_CLASSES, kernel_size=1)
        self._init_weights()

    def forward(self, features: Sequence[Tensor], output_size: tuple[int, int]) -> Tensor:
        if len(features) != len(self.encoder_channels):
            raise ValueError(f"decoder expects {len(self.encoder_channels)} feature maps, got {len(features)}")
        x = features[-1]
        for block, skip in zip(self.blocks, features[-2::-1]):
            x = block(x, tuple(skip.shape[-2:]), skip)
        x = self.full_res_block(x, tuple(output_size))
        return self.seg_head(x)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.seg_head.weight)
        nn.init.zeros_(self.seg_head.bias)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def build_decoder(encoder: ResNetEncoder, widths: Sequence[int] | None = None) -> UNetDecoder:
    """A U-Net decoder fitted to `encoder`'s stage channels and strides."""
    return UNetDecoder(encoder.out_channels, encoder.strides, DEFAULT_DECODER_WIDTHS if widths is None else widths)


def _check_encoder(channels: Sequence[int], strides: Sequence[int]) -> None:
    if len(channels) < 2 or len(channels) != len(strides):
        raise ValueError(f"need >= 2 stages with one stride each, got channels {channels} and strides {strides}")
    steps_ok = all(deeper in (shallower, 2 * shallower) for shallower, deeper in zip(strides, strides[1:]))
    if strides[0] < 1 or not steps_ok:
        raise ValueError(f"encoder strides must stay or double from stage to stage, got {tuple(strides)}")
