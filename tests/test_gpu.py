"""What only a GPU shows: AMP training steps of both stages (float16 autocast + GradScaler,
the CRF op on CUDA tensors without a host round trip). Skipped on machines without CUDA."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tcam_ray.config import load
from tcam_ray.data.tensors import normalise
from tcam_ray.methods.crf_loss import DenseCRFLoss
from tcam_ray.methods.pseudo_labels import pseudo_labels
from tcam_ray.methods.tcam_losses import ExtendedLogBarrier, tcam_loss
from tcam_ray.models import build_classifier, build_tcam_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def frames(batch: int = 8, size: int = 96) -> torch.Tensor:
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device="cuda")


def test_stage1_amp_step_updates_weights_with_a_grad_scaler():
    model = build_classifier("resnet18", 4, layer4_stride=1).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    before = model.head.fc.weight.detach().clone()
    labels = torch.randint(0, 4, (8,), device="cuda")
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.float16):
            logits = model(normalise(frames(), MEAN, STD))
            loss = F.cross_entropy(logits, labels)
        assert logits.dtype == torch.float16
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert torch.isfinite(loss)
    assert scaler.get_scale() > 0
    assert not torch.equal(before, model.head.fc.weight)


def test_stage2_amp_step_with_the_cuda_crf_op():
    cfg = load().tcam
    model = build_tcam_model("resnet18", 4, None, True, 1).cuda()
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    scaler = torch.amp.GradScaler("cuda")
    crf = DenseCRFLoss(weight=cfg.crf_weight, sigma_rgb=cfg.crf_sigma_rgb, sigma_xy=cfg.crf_sigma_xy)
    elb = ExtendedLogBarrier()
    images = frames()
    buffer = torch.rand(8, 2, 96, 96, device="cuda")
    valid = torch.ones(8, 2, dtype=torch.bool, device="cuda")
    labels = pseudo_labels(buffer, valid, n_fg=5, n_bg=5, generator=torch.Generator(device="cuda").manual_seed(0))
    assert labels.seeds.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(normalise(images, MEAN, STD))
        total, terms = tcam_loss(out.seg_logits, labels, images.permute(0, 3, 1, 2).float(), crf, elb, cfg)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert terms["crf"] != 0
    optimizer.zero_grad()
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
