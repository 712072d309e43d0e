"""What an exported model computes: normalised images (N, 3, H, W) -> (localization map (N, H, W) in [0, 1],
class logits (N, C)), in one forward pass with no backward, so every format can hold it."""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import TcamRayError
from ..methods.cam import CAM_METHODS, _gradcampp, _layercam, _upsample, minmax_normalize
from ..models.classifier import CamClassifier
from ..models.tcam import TCAMModel, foreground_map

OUTPUT_NAMES = ("localization_map", "class_logits")


class ExportError(TcamRayError):
    """A checkpoint, format or setting that cannot be exported; the message names it."""


class CamLocalizer(nn.Module):
    """Stage 1: the map of the predicted class by `method`, as `compute_cam_output` draws it.

    Gradient methods need no backward pass here: on the last stage under the WGAP head the class score is
    S_c = W_c . mean_ij A(i, j), so dS_c/dA_k(i, j) = W_ck / (h w) at every position.
    """

    def __init__(self, classifier: CamClassifier, method: str) -> None:
        super().__init__()
        if method not in CAM_METHODS:
            raise ExportError(f"cam.method {method!r} cannot be exported; exportable: {', '.join(CAM_METHODS)}")
        self.classifier = classifier
        self.method = method

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.classifier.features(images)[-1]
        logits = self.classifier.head(features)
        raw = self.class_map(features.float(), logits.argmax(dim=1))
        return minmax_normalize(_upsample(raw, tuple(images.shape[-2:]))), logits

    def class_map(self, features: Tensor, classes: Tensor) -> Tensor:
        """(B, h, w) unnormalised map of `classes` on the last stage's `features` (B, K, h, w)."""
        head = self.classifier.head
        if self.method == "cam":
            return head.cam(features, classes)
        height, width = features.shape[-2:]
        score_grads = (head.fc.weight[classes].float() / (height * width))[:, :, None, None].expand_as(features)
        combine = _gradcampp if self.method == "gradcampp" else _layercam
        return combine(features, score_grads)


class TcamLocalizer(nn.Module):
    """Stage 2: the foreground probability map (`foreground_map`, as evaluation draws it) and the logits."""

    def __init__(self, model: TCAMModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        seg_logits, cls_logits = self.model(images)
        return foreground_map(seg_logits), cls_logits
