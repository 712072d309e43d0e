"""Encoders, WGAP head, CAM classifier and weights loading (CPU, tiny inputs)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from tcam_ray.errors import UnreadableFileError
from tcam_ray.methods.cam import compute_cams
from tcam_ray.models import (
    ENCODER_ARCHS,
    CamClassifier,
    PretrainedUnavailableError,
    WeightsMismatchError,
    WGAPHead,
    build_classifier,
    build_encoder,
    load_weights,
)

IMAGE_SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet50():
    return build_encoder("resnet50").eval()


def _assert_stage_shapes(encoder, features, batch: int) -> None:
    assert len(features) == len(encoder.out_channels) == len(encoder.strides) == 5
    for feature, channels, stride in zip(features, encoder.out_channels, encoder.strides):
        assert feature.dtype == torch.float32
        assert feature.shape == (batch, channels, IMAGE_SIZE // stride, IMAGE_SIZE // stride)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_basic_block_encoders_return_stage_features(arch, images):
    encoder = build_encoder(arch).eval()
    assert encoder.out_channels == [64, 64, 128, 256, 512]
    assert encoder.strides == [2, 4, 8, 16, 32]
    with torch.no_grad():
        _assert_stage_shapes(encoder, encoder(images), batch=2)


def test_resnet50_encoder_returns_stage_features(resnet50, images):
    assert resnet50.out_channels == [64, 256, 512, 1024, 2048]
    with torch.no_grad():
        _assert_stage_shapes(resnet50, resnet50(images[:1]), batch=1)
    assert not hasattr(resnet50, "fc") and not hasattr(resnet50, "avgpool")


def test_unknown_arch_names_valid_ones():
    with pytest.raises(ValueError, match="resnet18.*resnet34.*resnet50"):
        build_encoder("resnet101")
    assert ENCODER_ARCHS == ("resnet18", "resnet34", "resnet50")


def test_bad_pretrained_arguments(tmp_path):
    with pytest.raises(ValueError, match="imagenet"):
        build_encoder("resnet18", pretrained="coco")
    with pytest.raises(ValueError, match="not both"):
        build_encoder("resnet18", pretrained="imagenet", weights=str(tmp_path / "w.pth"))
    with pytest.raises(UnreadableFileError, match="w.pth: weights file not found"):
        build_encoder("resnet18", weights=str(tmp_path / "w.pth"))


def test_pretrained_offline_says_to_pass_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(PretrainedUnavailableError, match=r"weights: PATH.*resnet18-f37072fd\.pth"):
        build_encoder("resnet18", pretrained="imagenet")


def test_pretrained_imagenet_loads_torchvision_weights_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    encoder = build_encoder("resnet18", pretrained="imagenet")
    assert torch.equal(encoder.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_torchvision_state_dict_loads_and_matches_torchvision_features(tmp_path, images):
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # includes the ImageNet fc, dropped on load
    encoder = build_encoder("resnet18", weights=str(path)).eval()
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(reference.children())[:-2])(images)
        assert torch.allclose(encoder(images)[-1], expected)


def test_checkpoint_round_trip_gives_same_outputs(tmp_path, images):
    model = build_classifier("resnet18", num_classes=3).eval()
    path = tmp_path / "checkpoint.pt"
    # As a trainer would save it: nested, DDP-prefixed, with the config beside it.
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": {"arch": "resnet18"}}, path)

    from_encoder_part = build_classifier("resnet18", num_classes=3, weights=str(path)).eval()
    whole = build_classifier("resnet18", num_classes=3).eval()
    load_weights(whole, path)
    with torch.no_grad():
        for got, want in zip(from_encoder_part.features(images), model.features(images)):
            assert torch.equal(got, want)
        assert torch.equal(whole(images), model(images))


def test_mismatched_keys_are_named(tmp_path):
    state = build_encoder("resnet18").state_dict()
    del state["layer2.0.bn1.running_mean"]
    state["layer9.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError) as caught:
        build_encoder("resnet18", weights=str(path))
    message = str(caught.value)
    assert "bad.pth" in message
    assert "missing keys (1): layer2.0.bn1.running_mean" in message
    assert "unexpected keys (1): layer9.weight" in message
    assert "conv1.weight: file (64, 3, 3, 3) vs model (64, 3, 7, 7)" in message


def test_wrong_arch_weights_list_missing_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_encoder("resnet18").state_dict(), path)
    with pytest.raises(WeightsMismatchError, match=r"missing keys \(\d+\): layer1\.2\."):
        build_encoder("resnet34", weights=str(path))


def test_wgap_head_forward_and_cam_by_hand():
    head = WGAPHead(in_channels=2, num_classes=3)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]]))
        head.fc.bias.copy_(torch.tensor([5.0, 5.0, 5.0]))
    features = torch.tensor(
        [
            [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]],
            [[[1.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 3.0]]],
        ]
    )
    # Sample 0, class 2: relu(A0 - A1); sample 1, class 1: relu(2 * A1). No bias.
    expected = torch.tensor([[[1.0, 1.0], [3.0, 3.0]], [[4.0, 0.0], [0.0, 6.0]]])
    assert torch.equal(head.cam(features, torch.tensor([2, 1])), expected)
    logits = head(features)
    assert torch.allclose(logits[0], torch.tensor([2.5, 1.0, 2.0]) + 5.0)


def test_classifier_logits_features_and_memory_formats(images):
    model = build_classifier("resnet18", num_classes=4).eval()
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (2, 4) and logits.dtype == torch.float32
        assert [f.shape[1] for f in model.features(images)] == model.encoder.out_channels
        channels_last = model.to(memory_format=torch.channels_last)
        same = channels_last(images.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(same, logits, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = model(images)
    assert low_precision.dtype == torch.bfloat16 and torch.isfinite(low_precision).all()
    assert model.num_classes == 4


def test_classifier_argument_checks():
    with pytest.raises(ValueError, match="num_classes"):
        build_classifier("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="512"):
        CamClassifier(build_encoder("resnet18"), WGAPHead(2048, 3))


def test_layer4_stride_one_gives_twice_finer_maps_with_the_same_weights():
    coarse = build_encoder("resnet18")
    fine = build_encoder("resnet18", layer4_stride=1)
    fine.load_state_dict(coarse.state_dict())  # same parameter shapes
    x = torch.randn(1, 3, 64, 64)
    assert coarse(x)[-1].shape[-2:] == (2, 2)
    assert fine(x)[-1].shape[-2:] == (4, 4)
    assert fine.strides[-1] == 16
    bottleneck = build_encoder("resnet50", layer4_stride=1)
    assert bottleneck(torch.randn(1, 3, 64, 64))[-1].shape[-2:] == (4, 4)


def test_layer3_stride_one_gives_output_stride_8():
    coarse = build_encoder("resnet18", layer4_stride=1)
    fine = build_encoder("resnet18", layer4_stride=1, layer3_stride=1)
    fine.load_state_dict(coarse.state_dict())
    assert [f.shape[-1] for f in fine(torch.randn(1, 3, 64, 64))] == [32, 16, 8, 8, 8]
    assert fine.strides == [2, 4, 8, 8, 8]
    classifier = build_classifier("resnet18", 3, layer4_stride=1, layer3_stride=1)
    assert compute_cams(classifier.eval(), torch.randn(2, 3, 64, 64), output_size=(8, 8)).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="layer3_stride"):
        build_encoder("resnet18", layer3_stride=4)
