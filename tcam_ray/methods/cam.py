"""Class activation maps of a CAM classifier: CAM, GradCAM++ and LayerCAM, batched.

`model` is anything with `features(x) -> list of (B, C, h, w)` and a `head`
(a WGAPHead: `head(last_features) -> logits`, `head.cam(...)`), such as
CamClassifier; unwrap DDP before calling.

- cam:       relu(W_c · A) on the last stage (Zhou et al. 2016).
- gradcampp: relu(sum_k w_k A_k), w_k = sum_ij alpha_ij^kc relu(dS_c/dA_ij^k) with
             alpha = g^2 / (2 g^2 + g^3 sum_ab A_ab) (Chattopadhay et al. 2018).
- layercam:  relu(sum_k relu(dS_c/dA^k) * A^k) (Jiang et al. 2021).

S_c is the class logit. Gradient methods run one forward and one backward for
the whole batch on sum_b S_{c_b}(x_b): in eval mode samples never interact, so
d(sum)/dA_b = dS_{c_b}(x_b)/dA_b and each map equals its single-sample one.
Maps are upsampled bilinearly, then min-max normalised per sample to [0, 1]
(a constant map becomes all zeros); the map math runs in float32 even under
autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CAM_METHODS: tuple[str, ...] = ("cam", "gradcampp", "layercam")

Classes = Tensor | Sequence[int] | int | None
Size = int | tuple[int, int] | None


@dataclass(frozen=True)
class CamOutput:
    maps: Tensor  # (B, H, W) float32 in [0, 1]
    logits: Tensor  # (B, num_classes), detached, from the same forward
    classes: Tensor  # (B,) int64: the class each map is for


def compute_cams(
    model: nn.Module,
    images: Tensor,
    classes: Classes = None,
    method: str = "cam",
    output_size: Size = None,
    layer: int = -1,
) -> Tensor:
    """(B, H, W) float32 maps in [0, 1] for `classes` (None: the predicted ones). See compute_cam_output."""
    return compute_cam_output(model, images, classes, method, output_size, layer).maps


def compute_cam_output(
    model: nn.Module,
    images: Tensor,
    classes: Classes = None,
    method: str = "cam",
    output_size: Size = None,
    layer: int = -1,
) -> CamOutput:
    """Maps, logits and classes from one forward (and, for gradient methods, one backward).

    images: float normalised (B, 3, H, W); classes: per-sample tensor/sequence, one int
    for all, or None for the argmax; output_size: (H, W) or an int, default the input's;
    layer: index into model.features(x) (plain CAM only supports the last one).
    The model must be in eval mode; its parameters' .grad are left untouched, and
    grad-mode/inference-mode of the caller does not matter.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; valid: {list(CAM_METHODS)}")
    if model.training:
        raise ValueError(
            "compute_cams needs model.eval(): in train mode batchnorm couples the samples of a "
            "batch (and updates its running statistics)"
        )
    if method == "cam":
        raw, logits, chosen = _plain_cam(model, images, classes, layer)
    else:
        raw, logits, chosen = _gradient_cam(model, images, classes, method, layer)
    size = _output_size(output_size, images)
    with _full_precision(images.device):
        maps = minmax_normalize(_upsample(raw.float(), size))
    return CamOutput(maps=maps, logits=logits.detach(), classes=chosen)


def minmax_normalize(maps: Tensor) -> Tensor:
    """Per-sample min-max of (B, H, W) maps to [0, 1]; constant maps -> zeros; NaN -> 0 first."""
    maps = torch.nan_to_num(maps, nan=0.0)
    lowest = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lowest
    scaled = (maps - lowest) / span.clamp_min(torch.finfo(maps.dtype).tiny)
    return torch.where(span > 0, scaled, torch.zeros_like(scaled)).clamp_(0.0, 1.0)


def _plain_cam(model: nn.Module, images: Tensor, classes: Classes, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        features = model.features(images)
        if _stage_index(layer, len(features)) != len(features) - 1:
            raise ValueError(
                f"plain CAM is defined on the last stage only (layer=-1), got layer={layer}; "
                "use method='gradcampp' or 'layercam' for other stages"
            )
        logits = model.head(features[-1])
        chosen = _resolve_classes(classes, logits)
        with _full_precision(images.device):
            raw = model.head.cam(features[-1].float(), chosen)
    return raw, logits, chosen


def _gradient_cam(
    model: nn.Module, images: Tensor, classes: Classes, method: str, layer: int
) -> tuple[Tensor, Tensor, Tensor]:
    # Works from no_grad/inference_mode callers; autograd.grad w.r.t. the activations only
    # never touches the parameters' .grad.
    with torch.inference_mode(False), torch.enable_grad():
        inputs = images.clone() if images.is_inference() else images
        features = model.features(inputs.detach().requires_grad_(True))
        activations = features[_stage_index(layer, len(features))]
        logits = model.head(features[-1])
        chosen = _resolve_classes(classes, logits)
        selected_scores = logits.gather(1, chosen[:, None]).sum()
        (grads,) = torch.autograd.grad(selected_scores, activations)
    with torch.no_grad(), _full_precision(images.device):
        combine = _gradcampp if method == "gradcampp" else _layercam
        raw = combine(activations.detach().float(), grads.float())
    return raw, logits, chosen


def _gradcampp(activations: Tensor, grads: Tensor) -> Tensor:
    grads_2 = grads.pow(2)
    denominator = 2 * grads_2 + activations.sum(dim=(2, 3), keepdim=True) * grads_2 * grads
    nonzero = denominator != 0
    alpha = torch.where(nonzero, grads_2 / torch.where(nonzero, denominator, 1.0), 0.0)
    channel_weights = (alpha * grads.relu()).sum(dim=(2, 3))  # (B, C)
    return torch.einsum("bc,bchw->bhw", channel_weights, activations).relu()


def _layercam(activations: Tensor, grads: Tensor) -> Tensor:
    return (grads.relu() * activations).sum(dim=1).relu()


def _resolve_classes(classes: Classes, logits: Tensor) -> Tensor:
    batch, num_classes = logits.shape
    if classes is None:
        return logits.detach().argmax(dim=1)
    chosen = torch.as_tensor(classes, dtype=torch.long, device=logits.device)
    if chosen.ndim == 0:
        chosen = chosen.expand(batch)
    if chosen.shape != (batch,):
        raise ValueError(f"classes must be an int or have shape ({batch},), got {tuple(chosen.shape)}")
    if bool(((chosen < 0) | (chosen >= num_classes)).any()):
        raise ValueError(f"classes must lie in [0, {num_classes}), got {chosen.tolist()}")
    return chosen


def _stage_index(layer: int, num_stages: int) -> int:
    if not -num_stages <= layer < num_stages:
        raise ValueError(f"layer {layer} out of range for {num_stages} feature stages")
    return layer % num_stages


def _output_size(output_size: Size, images: Tensor) -> tuple[int, int]:
    if output_size is None:
        return (images.shape[-2], images.shape[-1])
    if isinstance(output_size, int):
        return (output_size, output_size)
    height, width = output_size
    return (int(height), int(width))


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _full_precision(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)
