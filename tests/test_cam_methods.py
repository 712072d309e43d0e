"""CAM, GradCAM++ and LayerCAM maps (CPU, resnet18 on 64x64 inputs, and a toy model)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tcam_ray.methods.cam import CAM_METHODS, compute_cam_output, compute_cams, minmax_normalize
from tcam_ray.models import CamClassifier, WGAPHead, build_classifier

IMAGE_SIZE = 64
NUM_CLASSES = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> CamClassifier:
    torch.manual_seed(0)
    return build_classifier("resnet18", num_classes=NUM_CLASSES).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


class _IdentityEncoder(nn.Module):
    """Features are the (relu'd) input itself, so the answer of every method is known."""

    out_channels = [2]
    strides = [1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.relu()]


def _corner_model_and_images() -> tuple[CamClassifier, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0 reads channel 0 (a blob top-left), class 1 reads channel 1 (a blob bottom-right)."""
    head = WGAPHead(in_channels=2, num_classes=2)
    with torch.no_grad():
        head.fc.weight.copy_(torch.eye(2))
        head.fc.bias.zero_()
    top_left = torch.zeros(8, 8)
    top_left[:3, :3] = 1.0
    bottom_right = torch.zeros(8, 8)
    bottom_right[5:, 6:] = 2.0
    images = torch.stack([top_left, bottom_right])[None].repeat(2, 1, 1, 1)
    return CamClassifier(_IdentityEncoder(), head).eval(), images, top_left > 0, bottom_right > 0


@pytest.mark.parametrize("method", CAM_METHODS)
def test_maps_shape_dtype_range(model, images, method):
    maps = compute_cams(model, images, method=method)
    assert maps.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    flat = maps.flatten(1)
    assert torch.allclose(flat.amax(1), torch.ones(3)) and torch.equal(flat.amin(1), torch.zeros(3))
    assert compute_cams(model, images, method=method, output_size=(16, 24)).shape == (3, 16, 24)
    assert compute_cams(model, images, method=method, output_size=10).shape == (3, 10, 10)


def test_minmax_normalize_per_sample_and_constant_maps():
    maps = torch.stack([torch.arange(6.0).view(2, 3) * 10 + 5, torch.full((2, 3), 7.0), torch.zeros(2, 3)])
    maps[2, 0, 0] = float("nan")
    normalised = minmax_normalize(maps)
    assert torch.allclose(normalised[0], torch.arange(6.0).view(2, 3) / 5)
    assert torch.equal(normalised[1], torch.zeros(2, 3))
    assert torch.equal(normalised[2], torch.zeros(2, 3))


def test_plain_cam_is_the_normalised_upsampled_head_cam(model, images):
    classes = torch.tensor([0, 3, 1])
    with torch.no_grad():
        raw = model.head.cam(model.features(images)[-1], classes)
    upsampled = F.interpolate(raw[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")[:, 0]
    expected = minmax_normalize(upsampled)
    assert torch.allclose(compute_cams(model, images, classes=classes), expected, atol=1e-6)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_predicted_versus_given_class(model, images, method):
    output = compute_cam_output(model, images, method=method)
    with torch.no_grad():
        assert torch.allclose(output.logits, model(images), atol=1e-5)
    predicted = output.logits.argmax(1)
    assert torch.equal(output.classes, predicted)
    given = (predicted + 1) % NUM_CLASSES
    by_given = compute_cam_output(model, images, classes=given.tolist(), method=method)
    assert torch.equal(by_given.classes, given)
    assert torch.allclose(compute_cams(model, images, classes=predicted, method=method), output.maps, atol=1e-6)
    assert not torch.allclose(by_given.maps, output.maps)
    assert torch.equal(compute_cam_output(model, images, classes=2, method=method).classes, torch.full((3,), 2))


@pytest.mark.parametrize("method", ["gradcampp", "layercam"])
@pytest.mark.parametrize("layer", [-1, 3])
def test_batched_maps_equal_single_sample_maps(model, images, method, layer):
    classes = torch.tensor([1, 0, 3])
    batched = compute_cams(model, images, classes=classes, method=method, layer=layer)
    singles = [
        compute_cams(model, images[i : i + 1], classes=classes[i : i + 1], method=method, layer=layer)
        for i in range(3)
    ]
    assert torch.allclose(batched, torch.cat(singles), atol=1e-5)


@pytest.mark.parametrize("method", ["gradcampp", "layercam"])
def test_gradient_methods_leave_parameter_grads_alone(model, images, method):
    conv = model.encoder.conv1.weight
    conv.grad = torch.ones_like(conv)
    try:
        with torch.no_grad():
            maps = compute_cams(model, images, method=method)
        with torch.inference_mode():
            inference_images = images.clone()
            in_inference = compute_cams(model, inference_images, method=method)
        assert torch.equal(conv.grad, torch.ones_like(conv))
        assert all(p.grad is None for name, p in model.named_parameters() if name != "encoder.conv1.weight")
        assert torch.allclose(maps, in_inference, atol=1e-6)
    finally:
        conv.grad = None


@pytest.mark.parametrize("method", ["gradcampp", "layercam"])
def test_gradient_methods_work_on_frozen_models(images, method):
    frozen = build_classifier("resnet18", num_classes=2).eval().requires_grad_(False)
    maps = compute_cams(frozen, images[:1], method=method)
    assert maps.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and maps.max() == 1


@pytest.mark.parametrize("method", CAM_METHODS)
def test_known_answer_evidence_in_one_corner(method):
    toy, toy_images, top_left, bottom_right = _corner_model_and_images()
    maps = compute_cams(toy, toy_images, classes=torch.tensor([0, 1]), method=method)
    assert torch.equal(maps[0], top_left.float())
    assert torch.equal(maps[1], bottom_right.float())
    assert compute_cam_output(toy, toy_images, method=method).classes.tolist() == [1, 1]


@pytest.mark.parametrize("method", CAM_METHODS)
def test_autocast_bfloat16_still_gives_float32_maps_in_range(model, images, method):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = compute_cams(model, images[:2], method=method)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("method", CAM_METHODS)
def test_channels_last_gives_the_same_maps(model, images, method):
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    maps = compute_cams(channels_last, images.contiguous(memory_format=torch.channels_last), method=method)
    assert torch.allclose(maps, compute_cams(model, images, method=method), atol=1e-4)


def test_bad_arguments(model, images):
    with pytest.raises(ValueError, match="gradcampp"):
        compute_cams(model, images, method="scorecam")
    with pytest.raises(ValueError, match="last stage"):
        compute_cams(model, images, method="cam", layer=2)
    with pytest.raises(ValueError, match="out of range"):
        compute_cams(model, images, method="layercam", layer=5)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        compute_cams(model, images, classes=[0, 1])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        compute_cams(model, images, classes=[0, 1, 4])
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            compute_cams(model, images, method="layercam")
    finally:
        model.eval()
