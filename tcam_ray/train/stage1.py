"""Stage 1: the CAM classifier. Cross-entropy on frames tagged with their video's class;
the localization map is the CAM (cam.method) of the true or predicted class."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.frames import IMAGE, LABEL, split_rows
from ..data.tensors import normalise
from ..methods.cam import compute_cam_output
from ..models import build_classifier
from .runner import Runner


class Stage1Runner(Runner):
    stage = "cam"

    def build_model(self) -> torch.nn.Module:
        model = self.cfg.model
        return build_classifier(model.arch, len(self.classes), model.pretrained, model.weights, model.layer4_stride,
                                model.layer3_stride)

    def samples_per_epoch(self) -> int:
        train = split_rows(self.index.table, "train")
        if self.cfg.input.sampling == "one_per_shot":
            return len(set(train["shot_id"].to_pylist()))
        return train.num_rows

    def step_loss(self, batch):
        images = normalise(batch[IMAGE], self.cfg.input.mean, self.cfg.input.std)
        labels = batch[LABEL]
        logits = self.model(images)
        correct = (logits.argmax(1) == labels).sum().float()
        return F.cross_entropy(logits, labels), {"correct": correct}

    def maps_and_predictions(self, images, labels, method=None):
        target = labels if self.cfg.eval.cam_target == "true" else None
        out = compute_cam_output(self.core, images, target, method or self.cfg.cam.method)
        return out.maps, out.logits.argmax(1)

    def extra_map_methods(self) -> list[str]:
        return [method for method in self.cfg.eval.cam_methods if method != self.cfg.cam.method]
