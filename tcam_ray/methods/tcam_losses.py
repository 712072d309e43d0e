"""TCAM stage-2 losses on the decoder's (background, foreground) output.

Every loss returns a scalar computed in float32 (or float64 for float64
inputs) whatever the autocast state, and is differentiable.

Sizes. Region sizes are sums of probabilities in pixels, as in the paper's
code, not fractions of the frame. In the ELB's log branch the two differ by a
constant (-log(H*W)/t), so gradients are the same; what changes is where the
linear extension starts: at a size of 1/t^2 pixels (i.e. practically never)
rather than at a fraction 1/t^2 of the frame. With fractions and t = 1 every
size in [0, 1) would fall on the linear branch, where -size(bg) - size(fg) = -1
is constant: the max-size loss would have no gradient at all and the paper's
lambda 0.01 would mean nothing. A consequence: the max-size value is negative
(about -log(H*W / 2) / t per frame at a balanced split) and depends on the frame
size; only its changes matter. The foreground-size band is the one term the
paper states in fractions (its target is the CAM's area fraction); it is kept so.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcam_ray.config import TcamConfig
from tcam_ray.methods.crf_loss import DenseCRFLoss, MultiFrameColourCRFLoss

BACKGROUND, FOREGROUND = 0, 1


def _float32(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run `fn` with autocast off and half-precision tensor arguments promoted to float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Tensor:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*map(_promote, args), **{k: _promote(v) for k, v in kwargs.items()})

    return wrapper


def _promote(value: Any) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point() and value.element_size() < 4:
        return value.float()
    return value


def _check_two_channels(probs: Tensor, name: str) -> None:
    if probs.dim() != 4 or probs.shape[1] != 2:
        raise ValueError(f"{name}: expected (B, 2, H, W) background/foreground maps, got {tuple(probs.shape)}")


def resize_nearest(maps: Tensor, size: Sequence[int]) -> Tensor:
    """(B, h, w) integer or bool maps -> (B, *size) by nearest neighbour (no-op at the same size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    resized = F.interpolate(maps[:, None].float(), size=tuple(size), mode="nearest-exact")
    return resized[:, 0].to(maps.dtype)


def roi_fg_fraction(roi: Tensor) -> Tensor:
    """Area fraction (B,) of each frame's ROI (B, h, w): the size band's target."""
    return roi.flatten(1).float().mean(dim=1)


def roi_box_mask(roi: Tensor) -> Tensor:
    """(B, h, w) bool: the bounding box of each frame's ROI; the whole frame where the ROI is empty."""
    rows = roi.any(dim=2)
    cols = roi.any(dim=1)
    rows_inside = _between_first_and_last(rows)
    cols_inside = _between_first_and_last(cols)
    box = rows_inside[:, :, None] & cols_inside[:, None, :]
    empty = ~rows.any(dim=1)
    return box | empty[:, None, None]


def _between_first_and_last(flags: Tensor) -> Tensor:
    """(B, n) bool -> True from each row's first True to its last True (inclusive)."""
    as_int = flags.to(torch.uint8)
    after_first = as_int.cummax(dim=1).values.bool()
    before_last = as_int.flip(1).cummax(dim=1).values.flip(1).bool()
    return after_first & before_last


def region_sizes(probs: Tensor) -> Tensor:
    """Soft sizes in pixels, (B, 2, H, W) -> (B, 2): the sum of each channel's probabilities."""
    return probs.sum(dim=(2, 3))


@_float32
def self_learning_loss(seg_logits: Tensor, seeds: Tensor, ignore_index: int = -100) -> Tensor:
    """Cross-entropy on the seed pixels only, averaged over them.

    seg_logits (B, 2, H, W); seeds (B, h, w) int64 with 0 (background), 1
    (foreground) or `ignore_index`. Seeds at another resolution (e.g. the CAM
    store's) are nearest-resized to (H, W), so each seed square keeps covering
    the same part of the frame. A batch without seeds gives 0 (with a graph).
    """
    _check_two_channels(seg_logits, "self_learning_loss")
    if seeds.dim() != 3 or seeds.shape[0] != seg_logits.shape[0]:
        raise ValueError(f"seeds must have shape (B={seg_logits.shape[0]}, h, w), got {tuple(seeds.shape)}")
    seeds = resize_nearest(seeds.long(), seg_logits.shape[-2:])
    per_pixel_sum = F.cross_entropy(seg_logits, seeds, ignore_index=ignore_index, reduction="sum")
    num_seeds = (seeds != ignore_index).sum().clamp_min(1)
    return per_pixel_sum / num_seeds


@_float32
def sparse_self_learning_loss(seg_logits: Tensor, pixels: Tensor, classes: Tensor) -> Tensor:
    """Cross-entropy at the seed pixels only, averaged over them: `self_learning_loss` without the label image.

    pixels (S,) distinct flat batch indices (frame * H * W + y * W + x) at the
    logits' size; classes (S,) 0 (background) or 1 (foreground). Only the S
    seed logits are read, instead of a (B, H, W) target mostly ignored.
    """
    _check_two_channels(seg_logits, "sparse_self_learning_loss")
    if pixels.numel() == 0:
        return seg_logits.sum() * 0.0
    frames, channels, height, width = seg_logits.shape
    frame = torch.div(pixels, height * width, rounding_mode="floor")
    picked = seg_logits.reshape(frames, channels, height * width)[frame, :, pixels - frame * height * width]
    return F.cross_entropy(picked, classes.long())


def seed_loss(seg_logits: Tensor, seeds: Tensor | Any, ignore_index: int = -100) -> Tensor:
    """The self-learning loss from a seed image (B, h, w), or from the pseudo-label step's result: read from
    its seed pixels when they are at the logits' size (the training case), else from its label image."""
    pixels = getattr(seeds, "seed_pixels", None)
    if pixels is not None and tuple(seeds.roi.shape[-2:]) == tuple(seg_logits.shape[-2:]):
        return sparse_self_learning_loss(seg_logits, pixels, seeds.seed_classes)
    return self_learning_loss(seg_logits, getattr(seeds, "seeds", seeds), ignore_index)


class ExtendedLogBarrier(nn.Module):
    """Extended log-barrier (Kervadec et al. 2019) for constraints z <= 0, averaged over all z.

    psi_t(z) = -log(-z) / t                        if z <= -1/t^2
             = t z - log(1/t^2) / t + 1/t          otherwise
    (continuous with a continuous derivative at -1/t^2). `t` starts at
    `init_t`; `step()`, once per epoch, multiplies it by `mulcoef` up to
    `max_t`. `t` travels in `state_dict()` (as extra state) so a resumed run
    keeps it; the module has no parameters or buffers.
    """

    def __init__(self, init_t: float = 1.0, max_t: float = 10.0, mulcoef: float = 1.01) -> None:
        super().__init__()
        if not (init_t > 0 and max_t >= init_t and mulcoef >= 1):
            raise ValueError(f"ELB needs 0 < init_t <= max_t and mulcoef >= 1, got {init_t=}, {max_t=}, {mulcoef=}")
        self.init_t, self.max_t, self.mulcoef = float(init_t), float(max_t), float(mulcoef)
        self.t = self.init_t

    def step(self) -> float:
        """Advance t one epoch; returns the new t."""
        self.t = min(self.t * self.mulcoef, self.max_t)
        return self.t

    @_float32
    def forward(self, z: Tensor) -> Tensor:
        t = self.t
        threshold = -1.0 / t**2
        # Clamp so the branch torch.where discards never produces inf/nan gradients. At z ==
        # threshold both branches agree in value and slope; the linear one is taken there
        # because clamp's gradient vanishes at its bound.
        log_branch = -torch.log(-z.clamp_max(threshold)) / t
        linear_branch = t * z - math.log(1.0 / t**2) / t + 1.0 / t
        return torch.where(z < threshold, log_branch, linear_branch).mean()

    def get_extra_state(self) -> dict[str, float]:
        return {"t": self.t, "init_t": self.init_t, "max_t": self.max_t, "mulcoef": self.mulcoef}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.t = float(state["t"])

    def extra_repr(self) -> str:
        return f"t={self.t:.4g}, init_t={self.init_t}, max_t={self.max_t}, mulcoef={self.mulcoef}"


@_float32
def max_size_loss(probs: Tensor, elb: ExtendedLogBarrier) -> Tensor:
    """TCAM's max-size constraint: ELB on -size(bg) and -size(fg), mean over frames and both channels.

    probs (B, 2, H, W) softmax output; sizes in pixels (see the module docstring).
    Larger regions lower it, so neither region can collapse to empty (no
    trivial all-background solution).
    """
    _check_two_channels(probs, "max_size_loss")
    return elb(-region_sizes(probs))


@_float32
def entropy_loss(probs: Tensor) -> Tensor:
    """Mean per-pixel Shannon entropy (nats) of probs (B, K, H, W): 0 for one-hot, log K for uniform."""
    tiny = torch.finfo(probs.dtype).tiny
    return -(probs * probs.clamp_min(tiny).log()).sum(dim=1).mean()


@_float32
def fg_size_band_loss(probs: Tensor, cam_fg_fraction: Tensor, margin: float, elb: ExtendedLogBarrier) -> Tensor:
    """Foreground area fraction kept within [cam - margin, cam + margin] by ELB on both bounds.

    cam_fg_fraction (B,) in [0, 1]: the pooled CAM's foreground (ROI) area
    fraction per frame. Mean over frames of the two constraints' average.
    """
    _check_two_channels(probs, "fg_size_band_loss")
    height, width = probs.shape[-2:]
    fg_fraction = region_sizes(probs)[:, FOREGROUND] / (height * width)
    target = cam_fg_fraction.to(fg_fraction)
    too_small = target - margin - fg_fraction
    too_large = fg_fraction - target - margin
    return elb(torch.stack([too_small, too_large], dim=1))


@_float32
def bg_larger_than_fg_loss(probs: Tensor, elb: ExtendedLogBarrier) -> Tensor:
    """ELB on size(fg) - size(bg) <= 0 (sizes in pixels), mean over frames."""
    _check_two_channels(probs, "bg_larger_than_fg_loss")
    sizes = region_sizes(probs)
    return elb(sizes[:, FOREGROUND] - sizes[:, BACKGROUND])


@_float32
def empty_outside_box_loss(probs: Tensor, boxes_mask: Tensor, elb: ExtendedLogBarrier | None = None) -> Tensor:
    """Foreground probability outside the ROI's bounding box pushed to 0; mean over frames.

    boxes_mask (B, h, w) or (B, 1, h, w): 1 inside the box, 0 outside
    (nearest-resized to the maps' size).
    Without `elb`: the foreground mass outside the box as a fraction of the
    frame (0 when the foreground is inside). With `elb` (the paper's form):
    ELB of that mass in pixels; being >= 0 it always sits on the linear
    branch, t * mass + (2 log t + 1) / t, so its minimum is that constant, not 0.
    """
    _check_two_channels(probs, "empty_outside_box_loss")
    if boxes_mask.dim() == 4:
        boxes_mask = boxes_mask[:, 0]
    if boxes_mask.dim() != 3 or boxes_mask.shape[0] != probs.shape[0]:
        raise ValueError(f"boxes_mask must have shape (B={probs.shape[0]}, h, w), got {tuple(boxes_mask.shape)}")
    boxes_mask = resize_nearest(boxes_mask, probs.shape[-2:])
    outside = probs[:, FOREGROUND] * (1 - boxes_mask.to(probs))
    mass = outside.sum(dim=(1, 2))
    if elb is not None:
        return elb(mass)
    return mass.mean() / (probs.shape[-2] * probs.shape[-1])


LOSS_TERMS = ("self_learning", "crf", "colour_crf", "max_size", "entropy", "size_band", "bg_larger", "outside_box")


def enabled_terms(settings: Any) -> list[str]:
    return [name for name in LOSS_TERMS if getattr(settings, name)]


def tcam_loss(
    seg_logits: Tensor,
    seeds: Tensor | Any,
    images: Tensor | None,
    crf: nn.Module | None,
    elb: ExtendedLogBarrier,
    settings: Any,
    *,
    roi: Tensor | None = None,
    cam_fg_fraction: Tensor | None = None,
    boxes_mask: Tensor | None = None,
    colour_crf: nn.Module | None = None,
    clip: int = 1,
    ignore_index: int = -100,
) -> tuple[Tensor, dict[str, float]]:
    """The weighted sum of the enabled stage-2 losses -> (total, {term: weighted value, ..., "total": value}).

    seg_logits (B, 2, H, W). seeds: (B, h, w) int64, or the pseudo-label
    step's result (anything with `.seeds` and `.roi`), whose ROI then also
    serves the optional terms. images: raw RGB in [0, 255] (B, 3, H, W) for
    the CRF. crf: a module forward(images, probs) -> weighted scalar, e.g.
    `DenseCRFLoss` (its weight applies inside it, as in the paper's code).
    colour_crf: CoLo-CAM's term, a module forward(frames (N, T, 3, H, W),
    probs (N, T, 2, H, W)) -> weighted scalar (`MultiFrameColourCRFLoss`);
    the batch then holds N clips of `clip` consecutive frames each.
    settings: the config's `tcam` section (`TcamConfig`).
    The size band's target defaults to the ROI's area fraction
    (`cam_fg_fraction` overrides), the outside-box mask to the ROI's bounding
    box (`boxes_mask` overrides). Everything runs in float32 under autocast.
    """
    if roi is None and hasattr(seeds, "roi"):
        roi = seeds.roi
    if cam_fg_fraction is None and roi is not None:
        cam_fg_fraction = roi_fg_fraction(roi)
    if boxes_mask is None and roi is not None:
        boxes_mask = roi_box_mask(roi)
    s = settings
    _require(s.self_learning, seeds, "seeds", "self_learning")
    _require(s.crf, images, "images", "crf")
    _require(s.crf, crf, "CRF module", "crf")
    _require(s.colour_crf, colour_crf, "colour CRF module", "colour_crf")
    _require(s.colour_crf, images, "images", "colour_crf")
    if s.colour_crf and (clip < 2 or seg_logits.shape[0] % clip):
        raise ValueError(f"tcam_loss: the colour CRF needs clips of 2 frames or more, got {seg_logits.shape[0]} "
                         f"frames in clips of {clip}")
    _require(s.size_band, cam_fg_fraction, "cam_fg_fraction (or roi)", "size_band")
    _require(s.outside_box, boxes_mask, "boxes_mask (or roi)", "outside_box")
    with torch.autocast(device_type=seg_logits.device.type, enabled=False):
        logits = _promote(seg_logits)
        probs = logits.softmax(dim=1)
        terms: dict[str, Tensor] = {}
        if s.self_learning:
            terms["self_learning"] = s.self_learning_weight * seed_loss(logits, seeds, ignore_index)
        if s.crf:
            terms["crf"] = _promote(crf(images, probs))
        if s.colour_crf:
            terms["colour_crf"] = _promote(colour_crf(images.unflatten(0, (-1, clip)), probs.unflatten(0, (-1, clip))))
        if s.max_size:
            terms["max_size"] = s.max_size_weight * max_size_loss(probs, elb)
        if s.entropy:
            terms["entropy"] = s.entropy_weight * entropy_loss(probs)
        if s.size_band:
            terms["size_band"] = s.size_band_weight * fg_size_band_loss(probs, cam_fg_fraction, s.size_band_margin, elb)
        if s.bg_larger:
            terms["bg_larger"] = s.bg_larger_weight * bg_larger_than_fg_loss(probs, elb)
        if s.outside_box:
            terms["outside_box"] = s.outside_box_weight * empty_outside_box_loss(probs, boxes_mask, elb)
        if not terms:
            raise ValueError("tcam_loss: every loss term is switched off")
        values = torch.stack(list(terms.values()))
        total = values.sum()
    # One host transfer for all the logged values (one device sync per step, not one per term).
    logged = dict(zip([*terms, "total"], torch.cat([values, total[None]]).detach().tolist()))
    return total, logged


class TCAMLoss(nn.Module):
    """`tcam_loss` with its CRF module and ELB held together; `state_dict()` carries the ELB's t.

    TCAMLoss(settings=None, crf_loss=None, ignore_index=-100, **overrides):
    `overrides` replace single settings (e.g. entropy=True); `crf_loss`
    replaces the default `DenseCRFLoss` built from the settings with any
    module of the same contract (e.g. an exact dense one on downscaled frames
    while the lattice op is unavailable). forward takes tcam_loss's arguments
    from `seg_logits` on (seg_logits, seeds, images, roi=..., ...).
    """

    def __init__(
        self,
        settings: TcamConfig | None = None,
        crf_loss: nn.Module | None = None,
        ignore_index: int = -100,
        **overrides: Any,
    ) -> None:
        super().__init__()
        settings = settings or TcamConfig()
        if overrides:
            settings = dataclasses.replace(settings, **overrides)
        self.settings = settings
        self.ignore_index = ignore_index
        self.elb = ExtendedLogBarrier(settings.elb_init_t, settings.elb_max_t, settings.elb_mulcoef)
        if crf_loss is None:
            crf_loss = DenseCRFLoss(
                settings.crf_weight, settings.crf_sigma_rgb, settings.crf_sigma_xy, settings.crf_scale
            )
        self.crf = crf_loss
        self.colour_crf = MultiFrameColourCRFLoss(settings.colour_crf_weight, settings.colour_crf_sigma_rgb,
                                                  settings.colour_crf_scale, settings.colour_crf_adaptive)

    def step_epoch(self) -> float:
        """Call once per epoch: advances the ELB's t; returns it."""
        return self.elb.step()

    def forward(
        self, seg_logits: Tensor, seeds: Tensor | Any, images: Tensor | None, **optional: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        return tcam_loss(
            seg_logits, seeds, images, self.crf, self.elb, self.settings, colour_crf=self.colour_crf,
            ignore_index=self.ignore_index, **optional
        )


def _require(enabled: bool, value: Any, name: str, term: str) -> None:
    if enabled and value is None:
        raise ValueError(f"tcam_loss: the {term!r} term is on but no {name} was given")
