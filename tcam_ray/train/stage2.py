"""Stage 2 (TCAM, CoLo-CAM): a decoder over the stage-1 encoder, trained from pseudo-labels built on
the worker from each frame's neighbour-frame CAM buffer (CAM-TMP -> ROI -> seeds), with the
self-learning, dense CRF and max-size losses, and for CoLo-CAM the colour CRF over the frames of a
clip. The localization map is the decoder's foreground probability."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from ..config import ConfigError, TcamConfig
from ..data.buffers import BUFFER, VALID, clips_per_pass
from ..data.cam_store import CamStore
from ..data.frames import IMAGE, LABEL
from ..data.tensors import normalise
from ..methods.crf_loss import DenseCRFLoss, MultiFrameColourCRFLoss
from ..methods.pseudo_labels import pseudo_labels
from ..methods.tcam_losses import ExtendedLogBarrier, tcam_loss
from ..models.tcam import build_tcam_model, foreground_map
from .checkpoints import META_FILE, checkpoint_config, load_state, read_meta
from .runner import Runner

STORE_CHECKPOINT = "store"


def classifier_checkpoint(settings: TcamConfig, store: CamStore) -> Path:
    """The stage-1 checkpoint the decoder sits on: the CAM store's own (tcam.classifier = store), a checkpoint
    beside it in its run (best-top1, best-corloc, ...: the TCAM code puts the decoder on the best
    classifier while its CAMs come from the best localiser), or a path."""
    source = Path(store.info.checkpoint)
    choice = settings.classifier
    if choice == STORE_CHECKPOINT:
        return source
    folder = source.parent / choice if "/" not in choice and "\\" not in choice else Path(choice)
    if not (folder / META_FILE).exists():
        raise ConfigError(f"config key 'tcam.classifier': {folder} is not a stage-1 checkpoint "
                          f"(the CAM store {settings.cams} was made from {source})")
    return folder


def check_classifier(folder: Path, store: CamStore) -> None:
    """The classifier must be the store's kind of model: same classes, arch and strides."""
    meta, model = read_meta(folder), checkpoint_config(folder).model
    store_model = checkpoint_config(Path(store.info.checkpoint)).model
    if meta.get("stage", "cam") != "cam" or meta["classes"] != store.info.classes or model != store_model:
        raise ConfigError(f"config key 'tcam.classifier': {folder} ({meta.get('stage', 'cam')}, {model.arch}, "
                          f"classes {meta['classes']}) is not the kind of classifier the CAM store was made with "
                          f"({store_model.arch}, classes {store.info.classes})")


class Stage2Runner(Runner):
    stage = "tcam"

    def __init__(self, cfg, job, ctx):
        self.store = CamStore.read(cfg.tcam.cams)
        self.classifier = classifier_checkpoint(cfg.tcam, self.store)
        self.stage1 = checkpoint_config(self.classifier)
        super().__init__(cfg, job, ctx)
        t = cfg.tcam
        self.elb = ExtendedLogBarrier(init_t=t.elb_init_t, max_t=t.elb_max_t, mulcoef=t.elb_mulcoef)
        self.crf = DenseCRFLoss(weight=t.crf_weight, sigma_rgb=t.crf_sigma_rgb, sigma_xy=t.crf_sigma_xy,
                                scale=t.crf_scale)
        self.colour_crf = MultiFrameColourCRFLoss(weight=t.colour_crf_weight, sigma_rgb=t.colour_crf_sigma_rgb,
                                                  scale=t.colour_crf_scale, adaptive=t.colour_crf_adaptive)
        self.seed_generator = torch.Generator(device=ctx.device).manual_seed(cfg.train.seed + ctx.world_rank)

    def build_model(self) -> torch.nn.Module:
        state = load_state(self.classifier)["model"]
        model = self.stage1.model
        return build_tcam_model(model.arch, len(self.classes), state, self.cfg.tcam.freeze_classifier,
                                model.layer4_stride, self.cfg.tcam.decoder_widths, model.layer3_stride)

    def samples_per_epoch(self) -> int:
        lengths = list(Counter(self.store.table["shot_id"].to_pylist()).values())
        return clips_per_pass(lengths, self.cfg.tcam.clip, self.cfg.tcam.clip_window,
                              self.cfg.input.sampling == "all")

    def step_loss(self, batch):
        """A batch of clips (B, T, ...): every frame is a sample of the per-frame losses; the colour CRF
        (CoLo-CAM) couples the T frames of each clip."""
        t = self.cfg.tcam
        clips, clip = batch[IMAGE].shape[:2]
        frames = batch[IMAGE].flatten(0, 1)  # a clip's frames stay side by side
        images = normalise(frames, self.cfg.input.mean, self.cfg.input.std)
        with torch.no_grad():
            labels = pseudo_labels(batch[BUFFER].flatten(0, 1), batch[VALID].flatten(0, 1), sharpen=t.sharpen,
                                   roi_mode=t.roi, min_size=t.min_size, max_p=t.max_p, min_p=t.min_p,
                                   n_fg=t.fg_seeds, n_bg=t.bg_seeds, ksz=t.ksz, weighted=t.weighted_seeds,
                                   generator=self.seed_generator)
        out = self.model(images)
        raw = frames.permute(0, 3, 1, 2).float()  # the CRFs' colours are the frames' 0-255 RGB
        total, terms = tcam_loss(out.seg_logits, labels, raw, self.crf, self.elb, t, colour_crf=self.colour_crf,
                                 clip=clip)
        samples = float(clips)
        stats = {name: torch.as_tensor(value, device=images.device) * samples for name, value in terms.items()}
        predicted = out.cls_logits.argmax(1).view(clips, clip)
        stats["correct"] = (predicted == batch[LABEL][:, None]).float().mean(dim=1).sum()
        return total, stats

    def maps_and_predictions(self, images, labels, method=None):
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
