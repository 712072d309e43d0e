"""Stage 2 (TCAM): a decoder over the stage-1 encoder, trained from pseudo-labels built on
the worker from each frame's neighbour-frame CAM buffer (CAM-TMP -> ROI -> seeds), with the
self-learning, dense CRF and max-size losses. The localization map is the decoder's
foreground probability."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.buffers import BUFFER, VALID
from ..data.cam_store import CamStore
from ..data.frames import IMAGE, LABEL
from ..data.tensors import normalise
from ..methods.crf_loss import DenseCRFLoss
from ..methods.pseudo_labels import pseudo_labels
from ..methods.tcam_losses import ExtendedLogBarrier, tcam_loss
from ..models.tcam import build_tcam_model, foreground_map
from .checkpoints import checkpoint_config, load_state
from .runner import Runner


class Stage2Runner(Runner):
    stage = "tcam"

    def __init__(self, cfg, job, ctx):
        self.store = CamStore.read(cfg.tcam.cams)
        self.stage1 = checkpoint_config(Path(self.store.info.checkpoint))
        super().__init__(cfg, job, ctx)
        t = cfg.tcam
        self.elb = ExtendedLogBarrier(init_t=t.elb_init_t, max_t=t.elb_max_t, mulcoef=t.elb_mulcoef)
        self.crf = DenseCRFLoss(weight=t.crf_weight, sigma_rgb=t.crf_sigma_rgb, sigma_xy=t.crf_sigma_xy,
                                scale=t.crf_scale)
        self.seed_generator = torch.Generator(device=ctx.device).manual_seed(cfg.train.seed + ctx.world_rank)

    def build_model(self) -> torch.nn.Module:
        state = load_state(Path(self.store.info.checkpoint))["model"]
        model = self.stage1.model
        return build_tcam_model(model.arch, len(self.classes), state, self.cfg.tcam.freeze_classifier,
                                model.layer4_stride, self.cfg.tcam.decoder_widths, model.layer3_stride)

    def samples_per_epoch(self) -> int:
        shots = self.store.table["shot_id"].to_pylist()
        return len(set(shots)) if self.cfg.input.sampling == "one_per_shot" else len(shots)

    def step_loss(self, batch):
        t = self.cfg.tcam
        images = normalise(batch[IMAGE], self.cfg.input.mean, self.cfg.input.std)
        with torch.no_grad():
            labels = pseudo_labels(batch[BUFFER], batch[VALID], sharpen=t.sharpen, roi_mode=t.roi,
                                   min_size=t.min_size, max_p=t.max_p, min_p=t.min_p, n_fg=t.fg_seeds,
                                   n_bg=t.bg_seeds, ksz=t.ksz, weighted=t.weighted_seeds,
                                   generator=self.seed_generator)
        out = self.model(images)
        raw = batch[IMAGE].permute(0, 3, 1, 2).float()  # the CRF's colours are the frame's 0-255 RGB
        total, terms = tcam_loss(out.seg_logits, labels, raw, self.crf, self.elb, t)
        samples = float(len(batch[LABEL]))
        stats = {name: torch.as_tensor(value, device=images.device) * samples for name, value in terms.items()}
        stats["correct"] = (out.cls_logits.argmax(1) == batch[LABEL]).sum().float()
        return total, stats

    def maps_and_predictions(self, images, labels):
        with torch.no_grad():
            out = self.core(images)
        return foreground_map(out.seg_logits), out.cls_logits.argmax(1)

    def extra_state(self) -> dict:
        return {"elb": self.elb.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "elb" in state:
            self.elb.load_state_dict(state["elb"])

    def on_epoch_end(self) -> None:
        self.elb.step()
