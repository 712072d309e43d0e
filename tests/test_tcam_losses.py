"""TCAM stage-2 losses: values on hand-made inputs, gradients, the ELB schedule, float32 under autocast."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import pytest
import torch

from tcam_ray.config import TcamConfig
import torch.nn.functional as F

from tcam_ray.methods.crf_loss import bilateral_features
from tcam_ray.methods.tcam_losses import (
    LOSS_TERMS,
    ExtendedLogBarrier,
    TCAMLoss,
    bg_larger_than_fg_loss,
    empty_outside_box_loss,
    entropy_loss,
    fg_size_band_loss,
    max_size_loss,
    enabled_terms,
    roi_box_mask,
    roi_fg_fraction,
    seed_loss,
    self_learning_loss,
    sparse_self_learning_loss,
    tcam_loss,
)
from tcam_ray.methods.pseudo_labels import pseudo_labels
from tcam_ray.ops._loader import OpBuildError, load_extension
from tcam_ray.ops.crf_reference import exact_dense_crf_energy

IGNORE = -100


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def two_channel(fg: torch.Tensor) -> torch.Tensor:
    """(B, H, W) foreground probabilities -> (B, 2, H, W) (background, foreground)."""
    return torch.stack([1 - fg, fg], dim=1)


# --- self-learning -----------------------------------------------------------------------


def test_self_learning_is_cross_entropy_on_seed_pixels():
    logits = torch.zeros(1, 2, 3, 3)
    logits[0, :, 0, 0] = torch.tensor([2.0, 0.0])
    logits[0, :, 1, 1] = torch.tensor([0.0, 1.0])
    logits[0, :, 2, 2] = torch.tensor([-5.0, 5.0])  # unlabelled: must not count
    seeds = torch.full((1, 3, 3), IGNORE)
    seeds[0, 0, 0], seeds[0, 1, 1] = 0, 1
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert self_learning_loss(logits, seeds).item() == pytest.approx(expected, rel=1e-6)
    other_ignore = seeds.where(seeds != IGNORE, 255)
    assert self_learning_loss(logits, other_ignore, ignore_index=255).item() == pytest.approx(expected, rel=1e-6)


def test_self_learning_without_seeds_is_zero_with_a_graph():
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    loss = self_learning_loss(logits, torch.full((2, 4, 4), IGNORE))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_self_learning_gradcheck():
    logits = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    seeds = torch.tensor([[[0, IGNORE, 1], [IGNORE, 1, IGNORE], [0, 0, IGNORE]]]).repeat(2, 1, 1)
    assert torch.autograd.gradcheck(lambda x: self_learning_loss(x, seeds), (logits,))


def test_sparse_self_learning_equals_the_dense_loss_and_its_gradient():
    labels = pseudo_labels(torch.rand(4, 2, 20, 20), torch.ones(4, 2, dtype=torch.bool), n_fg=4, n_bg=4,
                           generator=torch.Generator().manual_seed(0))
    logits = torch.randn(4, 2, 20, 20, dtype=torch.float64, requires_grad=True)
    sparse = sparse_self_learning_loss(logits, labels.seed_pixels, labels.seed_classes)
    dense = self_learning_loss(logits, labels.seeds)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-12)
    sparse_grad, = torch.autograd.grad(sparse, logits)
    dense_grad, = torch.autograd.grad(dense, logits)
    torch.testing.assert_close(sparse_grad, dense_grad)
    assert seed_loss(logits, labels).item() == pytest.approx(dense.item(), rel=1e-12)
    # at another size than the logits, the label image is resized as for a dense seed image
    bigger = torch.randn(4, 2, 40, 40, dtype=torch.float64)
    assert seed_loss(bigger, labels).item() == pytest.approx(self_learning_loss(bigger, labels.seeds).item())


def test_sparse_self_learning_without_seeds_is_zero_with_a_graph():
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    loss = sparse_self_learning_loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


# --- extended log-barrier ------------------------------------------------------------------


def test_elb_values():
    elb = ExtendedLogBarrier()  # t = 1, threshold -1
    assert elb(torch.tensor([-2.0])).item() == pytest.approx(-math.log(2))
    assert elb(torch.tensor([0.5])).item() == pytest.approx(1.5)  # t z - log(1/t^2)/t + 1/t
    assert elb(torch.tensor([-2.0, 0.5])).item() == pytest.approx((1.5 - math.log(2)) / 2)


@pytest.mark.parametrize("t", [1.0, 2.0, 7.3])
def test_elb_continuous_with_continuous_slope_at_threshold(t):
    elb = ExtendedLogBarrier(init_t=t, max_t=10.0)
    threshold, eps = -1 / t**2, 1e-9
    z = torch.tensor([threshold - eps, threshold, threshold + eps], dtype=torch.float64, requires_grad=True)
    values = torch.stack([elb(v) for v in z.unbind()])
    assert values[0].item() == pytest.approx(values[2].item(), abs=1e-7)
    assert values[1].item() == pytest.approx(2 * math.log(t) / t, abs=1e-12)
    slopes = [torch.autograd.grad(v, z, retain_graph=True)[0].sum().item() for v in values]
    assert slopes == pytest.approx([t, t, t], rel=1e-6)


def test_elb_gradcheck_both_branches():
    elb = ExtendedLogBarrier(init_t=2.0)
    z = torch.tensor([-3.0, -0.5, -0.1, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(elb, (z,))


def test_elb_schedule_capped_and_resumable():
    elb = ExtendedLogBarrier(init_t=1.0, max_t=10.0, mulcoef=1.01)
    assert elb.step() == pytest.approx(1.01)
    for _ in range(1000):
        elb.step()
    assert elb.t == 10.0
    elb = ExtendedLogBarrier()
    for _ in range(5):
        elb.step()
    buffer = io.BytesIO()
    torch.save(elb.state_dict(), buffer)
    resumed = ExtendedLogBarrier()
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert resumed.t == pytest.approx(1.01**5)


def test_elb_rejects_bad_schedule():
    with pytest.raises(ValueError):
        ExtendedLogBarrier(init_t=2.0, max_t=1.0)


# --- size constraints ----------------------------------------------------------------------


def test_max_size_prefers_two_regions_to_all_background():
    elb = ExtendedLogBarrier()
    all_background = max_size_loss(two_channel(torch.zeros(2, 8, 8)), elb)
    half_half = max_size_loss(two_channel(torch.full((2, 8, 8), 0.5)), elb)
    # all background: ELB(-64) = -log 64 and ELB(0) = 1 (linear branch, t = 1); half/half: 2x -log 32.
    assert all_background.item() == pytest.approx((1 - math.log(64)) / 2)
    assert half_half.item() == pytest.approx(-math.log(32))
    assert all_background > half_half


def test_max_size_gradient_grows_the_empty_region():
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 0] = 6.0  # nearly all background
    logits.requires_grad_()
    max_size_loss(logits.softmax(1), ExtendedLogBarrier()).backward()
    assert (logits.grad[:, 1] < 0).all()  # raising the foreground logits lowers the loss


def test_fg_size_band():
    elb = ExtendedLogBarrier(init_t=5.0)
    cam_fraction = torch.tensor([0.5])
    inside = fg_size_band_loss(two_channel(torch.full((1, 4, 4), 0.5)), cam_fraction, 0.1, elb)
    too_small = fg_size_band_loss(two_channel(torch.full((1, 4, 4), 0.1)), cam_fraction, 0.1, elb)
    too_large = fg_size_band_loss(two_channel(torch.full((1, 4, 4), 0.9)), cam_fraction, 0.1, elb)
    assert inside < too_small and inside < too_large
    # Inside the band both constraints are at -0.1 on the log branch (threshold -1/25).
    assert inside.item() == pytest.approx(-math.log(0.1) / 5)


def test_bg_larger_than_fg():
    elb = ExtendedLogBarrier()
    small_fg = bg_larger_than_fg_loss(two_channel(torch.full((1, 4, 4), 0.2)), elb)
    large_fg = bg_larger_than_fg_loss(two_channel(torch.full((1, 4, 4), 0.8)), elb)
    assert small_fg < large_fg
    # size(fg) - size(bg) = 3.2 - 12.8 = -9.6 on the log branch (t = 1).
    assert small_fg.item() == pytest.approx(-math.log(9.6), rel=1e-6)


def test_empty_outside_box():
    box = torch.zeros(1, 6, 6)
    box[:, 1:4, 1:4] = 1
    fg_inside = box * 0.9
    assert empty_outside_box_loss(two_channel(fg_inside), box).item() == 0.0
    fg_outside = fg_inside.clone()
    fg_outside[:, 5, 5] = 1.0
    assert empty_outside_box_loss(two_channel(fg_outside), box[:, None]).item() == pytest.approx(1 / 36)
    elb = ExtendedLogBarrier(init_t=2.0)
    at_zero = empty_outside_box_loss(two_channel(fg_inside), box, elb)
    assert at_zero.item() == pytest.approx((2 * math.log(2) + 1) / 2)  # ELB's linear branch at 0
    assert empty_outside_box_loss(two_channel(fg_outside), box, elb).item() == pytest.approx(at_zero.item() + 2.0)


def test_entropy():
    one_hot = two_channel(torch.randint(0, 2, (2, 4, 4)).double())
    assert entropy_loss(one_hot).item() == 0.0
    assert entropy_loss(torch.full((2, 2, 4, 4), 0.5)).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda p: max_size_loss(p, ExtendedLogBarrier(init_t=3.0)),
        entropy_loss,
        lambda p: fg_size_band_loss(p, torch.tensor([0.3, 0.6]), 0.05, ExtendedLogBarrier(init_t=3.0)),
        lambda p: bg_larger_than_fg_loss(p, ExtendedLogBarrier()),
        lambda p: empty_outside_box_loss(p, torch.eye(3).expand(2, 3, 3)),
        lambda p: empty_outside_box_loss(p, torch.eye(3).expand(2, 3, 3), ExtendedLogBarrier()),
    ],
    ids=["max_size", "entropy", "fg_size_band", "bg_larger_than_fg", "outside_box", "outside_box_elb"],
)
def test_gradcheck_through_softmax(loss_fn):
    logits = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x.softmax(1)), (logits,))


# --- combined loss -------------------------------------------------------------------------


class ExactBilateralCRF(torch.nn.Module):
    """DenseCRFLoss's contract on the exact dense affinity: no compiled op needed."""

    def __init__(self, weight: float = 2e-9):
        super().__init__()
        self.weight = weight

    def forward(self, images, probs):
        return self.weight * exact_dense_crf_energy(probs.flatten(2), bilateral_features(images, 15.0, 100.0))


def crf_op_available() -> bool:
    try:
        load_extension()
    except OpBuildError:
        return False
    return True


def batch(size: int = 16):
    logits = torch.randn(2, 2, size, size, requires_grad=True)
    seeds = torch.full((2, size, size), IGNORE)
    seeds[:, 1, 1], seeds[:, size // 2, size // 2] = 0, 1
    images = torch.rand(2, 3, size, size) * 255
    return logits, seeds, images


def test_tcam_loss_defaults_are_the_papers():
    loss = TCAMLoss()
    assert enabled_terms(loss.settings) == ["self_learning", "crf", "max_size"]
    assert (loss.crf.weight, loss.crf.sigma_rgb, loss.crf.sigma_xy, loss.crf.scale) == (2e-9, 15.0, 100.0, 1.0)
    assert (loss.elb.t, loss.elb.max_t, loss.elb.mulcoef) == (1.0, 10.0, 1.01)
    assert loss.settings.max_size_weight == 0.01 and loss.settings.self_learning_weight == 1.0


def test_tcam_loss_sums_its_terms_and_backpropagates():
    logits, seeds, images = batch()
    loss = TCAMLoss(crf_loss=ExactBilateralCRF())
    total, logged = loss(logits, seeds, images)
    assert set(logged) == {"self_learning", "crf", "max_size", "total"}
    assert logged["total"] == pytest.approx(logged["self_learning"] + logged["crf"] + logged["max_size"], rel=1e-5)
    assert logged["self_learning"] == pytest.approx(self_learning_loss(logits, seeds).item(), rel=1e-6)
    assert logged["max_size"] == pytest.approx(0.01 * max_size_loss(logits.softmax(1), loss.elb).item(), rel=1e-6)
    assert logged["crf"] == pytest.approx(loss.crf(images, logits.softmax(1)).item(), rel=1e-5)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@dataclass
class FakePseudoLabels:
    seeds: torch.Tensor
    roi: torch.Tensor


def test_tcam_loss_function_with_pseudo_labels_and_all_terms():
    logits, seeds, images = batch()
    roi = torch.zeros(2, 8, 8, dtype=torch.bool)  # CAM resolution: half the frame's
    roi[:, 2:6, 3:5] = True
    small_seeds = seeds[:, ::2, ::2]
    settings = TcamConfig(entropy=True, size_band=True, bg_larger=True, outside_box=True)
    elb = ExtendedLogBarrier()
    total, logged = tcam_loss(logits, FakePseudoLabels(small_seeds, roi), images, ExactBilateralCRF(), elb, settings)
    per_frame_terms = [term for term in LOSS_TERMS if term != "colour_crf"]  # the colour CRF needs clips
    assert list(logged) == [*per_frame_terms, "total"] and all(math.isfinite(v) for v in logged.values())
    probs = logits.softmax(1)
    band = fg_size_band_loss(probs, torch.full((2,), 8 / 64), settings.size_band_margin, elb)
    assert logged["size_band"] == pytest.approx(band.item(), rel=1e-6)
    box = torch.zeros(2, 16, 16)
    box[:, 4:12, 6:10] = 1
    assert logged["outside_box"] == pytest.approx(empty_outside_box_loss(probs, box, elb).item(), rel=1e-6)
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_roi_helpers():
    roi = torch.zeros(3, 5, 6, dtype=torch.bool)
    roi[0, 1, 1] = roi[0, 3, 4] = True  # two blobs: one box around both
    roi[1, 2:4, 0:2] = True
    box = roi_box_mask(roi)
    expected = torch.zeros(3, 5, 6, dtype=torch.bool)
    expected[0, 1:4, 1:5] = True
    expected[1, 2:4, 0:2] = True
    expected[2] = True  # empty ROI: no box constraint
    assert torch.equal(box, expected)
    assert roi_fg_fraction(roi).tolist() == pytest.approx([2 / 30, 4 / 30, 0.0])


def test_seeds_at_cam_resolution_are_resized_to_the_logits():
    logits = torch.randn(1, 2, 8, 8)
    seeds = torch.full((1, 4, 4), IGNORE)
    seeds[0, 1, 2] = 1
    full = torch.full((1, 8, 8), IGNORE)
    full[0, 2:4, 4:6] = 1
    assert self_learning_loss(logits, seeds).item() == pytest.approx(self_learning_loss(logits, full).item())


def test_tcam_loss_missing_inputs_and_settings():
    logits, seeds, images = batch()
    with pytest.raises(ValueError, match="seeds"):
        TCAMLoss()(logits, None, images)
    with pytest.raises(ValueError, match="boxes_mask"):
        TCAMLoss(outside_box=True)(logits, seeds, images)
    with pytest.raises(ValueError, match="switched off"):
        TCAMLoss(self_learning=False, crf=False, max_size=False)(logits, seeds, images)
    with pytest.raises(ValueError, match="tcam.max_size_weight': must be >= 0"):
        TcamConfig(max_size_weight=-1.0)
    _, logged = TCAMLoss(crf=False)(logits, seeds, None)
    assert "crf" not in logged


def test_tcam_loss_elb_state_travels_in_state_dict():
    loss = TCAMLoss()
    for _ in range(3):
        loss.step_epoch()
    resumed = TCAMLoss()
    resumed.load_state_dict(loss.state_dict())
    assert resumed.elb.t == pytest.approx(1.01**3)


def test_losses_are_float32_under_bfloat16_autocast():
    logits, seeds, images = batch()
    conv = torch.nn.Conv2d(2, 2, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = conv(logits)
        assert low.dtype == torch.bfloat16
        total, _ = TCAMLoss(crf_loss=ExactBilateralCRF(), entropy=True, bg_larger=True)(low, seeds, images)
        probs = low.softmax(1)
        singles = [
            self_learning_loss(low, seeds),
            max_size_loss(probs, ExtendedLogBarrier()),
            entropy_loss(probs),
            fg_size_band_loss(probs, torch.tensor([0.2, 0.3]), 0.1, ExtendedLogBarrier()),
            bg_larger_than_fg_loss(probs, ExtendedLogBarrier()),
            empty_outside_box_loss(probs, torch.ones(2, 16, 16)),
        ]
    assert total.dtype == torch.float32 and all(s.dtype == torch.float32 for s in singles)
    total.backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_sl_loss_matches_torch_cross_entropy_on_full_labels():
    logits, _, _ = batch(4)
    labels = torch.randint(0, 2, (2, 4, 4))
    assert self_learning_loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
