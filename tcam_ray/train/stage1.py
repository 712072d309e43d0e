"""Stage 1: the CAM classifier's training loop, the same in a Ray Train worker and in-process.

`train_loop_per_worker(config)` is what Ray Train runs on every worker; the
runner below holds the story: restore, then per epoch train, validate (CorLoc
and top-1 on rank 0), step the schedule, checkpoint and report.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..config import Config, config_from_dict, to_dict
from ..data import FrameIndex
from ..data.frames import IMAGE, LABEL, ROW, normalise
from ..data.pipeline import split_rows
from ..evaluation import LocalizationEvaluator
from ..methods.cam import compute_cam_output
from ..models import build_classifier
from .checkpoints import CheckpointKeeper, load_state
from .metrics_log import MetricsLog


@dataclass
class JobSpec:
    """What a worker needs besides the config: where the run lives."""

    run_dir: str
    index_path: str
    resume_from: str | None = None

    @property
    def metrics_path(self) -> Path:
        return Path(self.run_dir) / "metrics.jsonl"


class InjectedFailure(RuntimeError):
    """Raised once by train.fail_at_epoch, to exercise recovery."""


def autocast_for(device: torch.device, cfg: Config):
    if device.type == "cuda" and cfg.train.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cfg.train.cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_reduce_sum(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class EvalTargets:
    """Ground truth of one split, looked up by the `row` number each batch carries."""

    def __init__(self, rows: pa.Table):
        self.boxes = rows["boxes"].to_pylist()
        self.sizes = np.stack([rows["width"].to_numpy(), rows["height"].to_numpy()], axis=1)

    def lookup(self, row_numbers: torch.Tensor) -> tuple[list, np.ndarray]:
        rows = row_numbers.cpu().numpy()
        return [self.boxes[r] for r in rows], self.sizes[rows]


class Stage1Runner:
    def __init__(self, cfg: Config, job: JobSpec, ctx):
        self.cfg, self.job, self.ctx = cfg, job, ctx
        self.index = FrameIndex.read(job.index_path)
        self.classes = self.index.info.classes
        torch.manual_seed(cfg.train.seed)
        model = build_classifier(cfg.model.arch, len(self.classes), cfg.model.pretrained, cfg.model.weights,
                                 cfg.model.layer4_stride)
        self.model = ctx.prepare_model(model.to(memory_format=torch.channels_last))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                                         weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.train.step_size, cfg.train.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=ctx.device.type == "cuda" and cfg.train.amp)
        self.start_epoch = 1
        self.best = {"corloc": -1.0, "top1": -1.0}
        self.keeper = CheckpointKeeper(Path(job.run_dir), cfg.train.keep_last)
        self.log = MetricsLog(job.metrics_path)
        self.eval_targets = EvalTargets(split_rows(self.index.table, cfg.eval.split))
        self.check_epoch_size()

    @property
    def is_chief(self) -> bool:
        return self.ctx.world_rank == 0

    @property
    def core(self) -> torch.nn.Module:
        """The model without its DDP wrapper."""
        return getattr(self.model, "module", self.model)

    def check_epoch_size(self) -> None:
        train = split_rows(self.index.table, "train")
        samples = len(set(train["shot_id"].to_pylist())) if self.cfg.input.sampling == "one_per_shot" else train.num_rows
        per_worker = samples // self.ctx.world_size
        if per_worker < self.cfg.input.batch_size:
            raise ValueError(
                f"an epoch gives each of {self.ctx.world_size} worker(s) {per_worker} training samples "
                f"(input.sampling={self.cfg.input.sampling}), fewer than input.batch_size={self.cfg.input.batch_size}: "
                "lower the batch size or use input.sampling=all")

    # ------------------------------------------------------------------ the story

    def fit(self) -> dict:
        self.restore()
        last: dict = {}
        for epoch in range(self.start_epoch, self.cfg.train.epochs + 1):
            self.maybe_fail(epoch)
            train_metrics = self.train_epoch()
            val_metrics = self.validate() if self.is_chief else {}
            self.scheduler.step()
            last = self.end_epoch(epoch, train_metrics, val_metrics)
        return last

    def restore(self) -> None:
        folder = self.ctx.restore_checkpoint()
        if folder is None:
            return
        state = load_state(folder, self.ctx.device)
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best = state["best"]
        self.start_epoch = state["epoch"] + 1
        if self.is_chief:
            self.log.keep_until(state["epoch"])

    def maybe_fail(self, epoch: int) -> None:
        marker = Path(self.job.run_dir) / f".injected-failure-epoch-{epoch}"
        if self.cfg.train.fail_at_epoch == epoch and self.is_chief and not marker.exists():
            marker.touch()
            raise InjectedFailure(f"train.fail_at_epoch={epoch}: failing once on purpose")

    def train_epoch(self) -> dict:
        started = time.perf_counter()
        self.model.train()
        totals = torch.zeros(3, device=self.ctx.device)  # loss sum, correct, samples
        for batch in self.ctx.train_batches():
            images = normalise(batch[IMAGE], self.cfg.input.mean, self.cfg.input.std)
            labels = batch[LABEL]
            with autocast_for(self.ctx.device, self.cfg):
                logits = self.model(images)
                loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            totals += torch.stack([loss.detach().float() * len(labels), (logits.argmax(1) == labels).sum().float(),
                                   torch.tensor(float(len(labels)), device=self.ctx.device)])
        loss_sum, correct, samples = all_reduce_sum(totals, self.ctx.world_size).tolist()
        return {"loss": loss_sum / max(samples, 1), "top1": 100.0 * correct / max(samples, 1),
                "lr": self.optimizer.param_groups[0]["lr"], "samples": int(samples),
                "seconds": round(time.perf_counter() - started, 3)}

    def validate(self) -> dict:
        self.core.eval()
        evaluator = LocalizationEvaluator(len(self.classes), self.classes, self.cfg.eval.thresholds,
                                          self.cfg.eval.iou_thresholds, self.cfg.eval.box_mode)
        for batch in self.ctx.eval_batches(self.cfg.eval.split):
            images = normalise(batch[IMAGE], self.cfg.input.mean, self.cfg.input.std)
            labels = batch[LABEL]
            target = labels if self.cfg.eval.cam_target == "true" else None
            out = compute_cam_output(self.core, images, target, self.cfg.cam.method)
            boxes, sizes = self.eval_targets.lookup(batch[ROW])
            evaluator.add(out.maps, boxes, sizes, labels.cpu().numpy(), out.logits.argmax(1).cpu().numpy())
        return evaluator.result()

    def end_epoch(self, epoch: int, train: dict, val: dict) -> dict:
        metrics = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}}
        metrics.update({f"val_{k}": val[k] for k in ("corloc", "top1", "maxboxacc_v2") if k in val})
        folder = self.save(epoch, metrics, val) if self.is_chief else None
        self.ctx.report(metrics, folder)
        return metrics

    def save(self, epoch: int, metrics: dict, val: dict) -> Path:
        improved = {name: val.get(name) is not None and val[name] > self.best[name] for name in self.best}
        for name, better in improved.items():
            if better:
                self.best[name] = val[name]
        state = {"model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": epoch, "best": self.best}
        meta = {"stage": "cam", "epoch": epoch, "metrics": metrics, "classes": self.classes,
                "dataset_fingerprint": self.index.info.fingerprint, "arch": self.cfg.model.arch}
        folder = self.keeper.save_epoch(epoch, state, meta, to_dict(self.cfg))
        for name, better in improved.items():
            if better:
                self.keeper.save_best(name, folder)
        self.log.append({"epoch": epoch, "split": "train", **{k[6:]: v for k, v in metrics.items() if k.startswith("train_")}})
        if val:
            self.log.append({"epoch": epoch, "split": self.cfg.eval.split, **val})
        return folder


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train's entry point on every worker: {"cfg": plain config dict, "job": JobSpec fields}."""
    from .context import RayTrainContext

    cfg = config_from_dict(config["cfg"])
    job = JobSpec(**config["job"])
    torch.set_num_threads(max(1, int(cfg.scale.cpus_per_worker)))
    index = FrameIndex.read(job.index_path)
    resume = Path(job.resume_from) if job.resume_from else None
    return Stage1Runner(cfg, job, RayTrainContext(cfg, index.table, resume)).fit()


def job_dict(job: JobSpec) -> dict:
    return asdict(job)
