"""The TCAM decoder and model: shapes, freezing, a toy training step, stage-1 weights loading."""

from __future__ import annotations

import pytest
import torch

from tcam_ray.methods.tcam_losses import self_learning_loss
from tcam_ray.models import WeightsMismatchError, build_classifier
from tcam_ray.models.decoder import UNetDecoder, build_decoder
from tcam_ray.models.resnet import build_encoder
from tcam_ray.models.tcam import TCAMModel, TCAMOutput, build_tcam_model, foreground_map

NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("layer4_stride, layer3_stride", [(1, 2), (2, 2), (1, 1)])
@pytest.mark.parametrize("size", [(64, 64), (72, 56)])
def test_output_shapes_resnet18(layer4_stride, layer3_stride, size):
    model = build_tcam_model("resnet18", NUM_CLASSES, layer4_stride=layer4_stride, layer3_stride=layer3_stride)
    out = model(torch.randn(2, 3, *size))
    assert isinstance(out, TCAMOutput)
    assert out.seg_logits.shape == (2, 2, *size)
    assert out.cls_logits.shape == (2, NUM_CLASSES)
    fg = foreground_map(out.seg_logits)
    assert fg.shape == (2, *size)
    assert torch.allclose(fg, out.seg_logits.softmax(1)[:, 1])


def test_output_shapes_resnet50_channels():
    encoder = build_encoder("resnet50", layer4_stride=1)
    decoder = build_decoder(encoder, widths=(64, 32, 16, 16, 8))
    assert decoder.encoder_channels == (64, 256, 512, 1024, 2048)
    features = encoder(torch.randn(1, 3, 64, 64))
    assert decoder(features, (64, 64)).shape == (1, 2, 64, 64)


def test_decoder_rejects_bad_config():
    with pytest.raises(ValueError, match="widths"):
        UNetDecoder([64, 64, 128, 256, 512], [2, 4, 8, 16, 32], widths=(32, 16))
    with pytest.raises(ValueError, match="strides"):
        UNetDecoder([64, 64, 128, 256, 512], [2, 4, 8, 32, 32])


def test_frozen_classifier_gets_no_gradient_and_stays_in_eval():
    model = build_tcam_model("resnet18", NUM_CLASSES, freeze=True).train()
    assert model.training and model.decoder.training
    assert not any(m.training for m in model.classifier.modules())
    running_mean = model.classifier.encoder.bn1.running_mean.clone()

    out = model(torch.randn(2, 3, 64, 64))
    out.seg_logits.square().mean().backward()

    assert torch.equal(model.classifier.encoder.bn1.running_mean, running_mean)
    assert all(p.grad is None and not p.requires_grad for p in model.classifier.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.decoder.parameters()}


def test_unfrozen_classifier_trains():
    model = build_tcam_model("resnet18", NUM_CLASSES, freeze=False).train()
    assert model.classifier.training
    model(torch.randn(2, 3, 64, 64)).seg_logits.mean().backward()
    assert model.classifier.encoder.conv1.weight.grad is not None


def test_decoder_step_reduces_self_learning_loss():
    model = build_tcam_model("resnet18", NUM_CLASSES, decoder_widths=(32, 32, 16, 16, 8)).train()
    images = torch.randn(1, 3, 64, 64)
    seeds = torch.full((1, 64, 64), -100)
    seeds[:, 20:28, 20:28] = 1
    seeds[:, :6, :6] = 0
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(4):
        loss = self_learning_loss(model(images).seg_logits, seeds)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_loads_stage1_classifier_state():
    classifier = build_classifier("resnet18", NUM_CLASSES)
    state = classifier.state_dict()
    model = build_tcam_model("resnet18", NUM_CLASSES, classifier_state=state)
    assert torch.equal(model.classifier.head.fc.weight, state["head.fc.weight"])
    # A whole stage-1 checkpoint state and DDP prefixes are unwrapped.
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    model = build_tcam_model("resnet18", NUM_CLASSES, classifier_state=wrapped)
    assert torch.equal(model.classifier.encoder.conv1.weight, state["encoder.conv1.weight"])


@pytest.mark.parametrize(
    ("arch", "num_classes", "message"),
    [("resnet18", NUM_CLASSES + 1, "shape mismatch keys.*head.fc.weight"), ("resnet34", NUM_CLASSES, "missing keys")],
)
def test_mismatched_stage1_state_fails_clearly(arch, num_classes, message):
    state = build_classifier("resnet18", NUM_CLASSES).state_dict()
    with pytest.raises(WeightsMismatchError, match=f"(?s)stage-1 classifier.*{message}"):
        build_tcam_model(arch, num_classes, classifier_state=state)


def test_model_rejects_decoder_for_other_encoder():
    classifier = build_classifier("resnet18", NUM_CLASSES)
    with pytest.raises(ValueError, match="encoder channels"):
        TCAMModel(classifier, build_decoder(build_encoder("resnet50")))


def test_autocast_bfloat16_forward():
    model = build_tcam_model("resnet18", NUM_CLASSES).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    fg = foreground_map(out.seg_logits)
    assert fg.dtype == torch.float32 and fg.shape == (1, 64, 64) and torch.isfinite(fg).all()
