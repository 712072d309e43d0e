"""The stage-2 TCAM model: a stage-1 CAM classifier (frozen by default) plus a U-Net decoder.

forward(x) -> TCAMOutput(seg_logits (B, 2, H, W), cls_logits (B, C)); the
localization map at inference is `foreground_map(seg_logits)`. TCAMOutput is a NamedTuple so that
torch.export, torch.jit.trace and the ONNX exporter take the model as it is (tcam_ray/export).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tcam_ray.models.classifier import CamClassifier, build_classifier
from tcam_ray.models.decoder import UNetDecoder, build_decoder
from tcam_ray.models.weights import load_strict, unwrap_state_dict

FOREGROUND = 1  # channel of the foreground in seg_logits (0 is background)


class TCAMOutput(NamedTuple):
    seg_logits: Tensor  # (B, 2, H, W) at input size: background, foreground
    cls_logits: Tensor  # (B, num_classes) from the (frozen) classifier


class TCAMModel(nn.Module):
    """Classifier encoder -> stage features -> decoder (segmentation) and head (classification).

    With `freeze_classifier` (the default) the encoder and head get
    requires_grad False and stay in eval mode through `model.train()`, so the
    frozen batchnorm statistics don't drift; their forward then runs under
    no_grad. State dict keys: `classifier.encoder.*`, `classifier.head.*`,
    `decoder.*`.
    """

    def __init__(self, classifier: CamClassifier, decoder: UNetDecoder, freeze_classifier: bool = True) -> None:
        super().__init__()
        if tuple(decoder.encoder_channels) != tuple(classifier.encoder.out_channels):
            raise ValueError(
                f"decoder built for encoder channels {decoder.encoder_channels}, "
                f"classifier's encoder gives {tuple(classifier.encoder.out_channels)}"
            )
        self.classifier = classifier
        self.decoder = decoder
        self.freeze_classifier = freeze_classifier
        if freeze_classifier:
            classifier.requires_grad_(False)
            classifier.eval()

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def train(self, mode: bool = True) -> TCAMModel:
        super().train(mode)
        if self.freeze_classifier:
            self.classifier.eval()
        return self

    def forward(self, x: Tensor) -> TCAMOutput:
        frozen = torch.no_grad() if self.freeze_classifier else contextlib.nullcontext()
        with frozen:
            features = self.classifier.features(x)
            cls_logits = self.classifier.head(features[-1])
        seg_logits = self.decoder(features, tuple(x.shape[-2:]))
        return TCAMOutput(seg_logits=seg_logits, cls_logits=cls_logits)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters an optimiser should get (the decoder's only, when frozen)."""
        return (p for p in self.parameters() if p.requires_grad)


def foreground_map(seg_logits: Tensor) -> Tensor:
    """Softmax foreground probability (B, H, W) of seg logits (B, 2, H, W): the localization map."""
    if seg_logits.dim() != 4 or seg_logits.shape[1] != 2:
        raise ValueError(f"seg_logits must have shape (B, 2, H, W), got {tuple(seg_logits.shape)}")
    return seg_logits.float().softmax(dim=1)[:, FOREGROUND]


def build_tcam_model(
    arch: str,
    num_classes: int,
    classifier_state: Mapping[str, object] | None = None,
    freeze: bool = True,
    layer4_stride: int = 2,
    decoder_widths: Sequence[int] | None = None,
    layer3_stride: int = 2,
) -> TCAMModel:
    """A TCAM model whose classifier is loaded from a stage-1 `CamClassifier` state dict.

    `classifier_state` may also be a whole stage-1 checkpoint state (the
    classifier under "model"/"state_dict") or carry DDP/torch.compile
    prefixes; any missing, unexpected or mis-shaped key raises
    `WeightsMismatchError` naming them (e.g. a different arch or class count).
    Without it the classifier is randomly initialised (tests, debugging).
    """
    classifier = build_classifier(arch, num_classes, layer4_stride=layer4_stride, layer3_stride=layer3_stride)
    if classifier_state is not None:
        state = unwrap_state_dict(classifier_state, source="stage-1 classifier state")
        load_strict(classifier, state, source=f"the stage-1 classifier state ({arch}, {num_classes} classes expected)")
    return TCAMModel(classifier, build_decoder(classifier.encoder, decoder_widths), freeze_classifier=freeze)
