"""The training story both stages share, the same in a Ray Train worker and in-process:
restore, then per epoch train, validate (CorLoc and top-1 on rank 0), step the
schedule, checkpoint and report. A stage says how to build its model, what a
training step's loss is, and which map localises the object.
"""
from __future__ import annotations

import contextlib
import itertools
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from ..config import Config, to_dict
from ..data import FrameIndex
from ..data.frames import IMAGE, LABEL, ROW, split_rows
from ..data.tensors import normalise
from ..evaluation import LocalizationEvaluator
from ..models.resnet import backbone_layout
from .checkpoints import CheckpointKeeper, load_state
from .metrics_log import MetricsLog
from .progress import StepMeter


@dataclass
class JobSpec:
    """What a worker needs besides the config: where the run lives."""

    run_dir: str
    index_path: str
    stage: str = "cam"
    resume_from: str | None = None

    @property
    def metrics_path(self) -> Path:
        return Path(self.run_dir) / "metrics.jsonl"


EXTRA_METHOD_KEYS = ("corloc", "maxboxacc_v2", "best_threshold")  # logged per extra map method


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


class Runner(ABC):
    stage = ""

    def __init__(self, cfg: Config, job: JobSpec, ctx):
        self.cfg, self.job, self.ctx = cfg, job, ctx
        self.index = FrameIndex.read(job.index_path)
        self.classes = self.index.info.classes
        torch.manual_seed(cfg.train.seed)
        self.model = ctx.prepare_model(self.build_model().to(memory_format=torch.channels_last))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(trainable, lr=cfg.train.lr, momentum=cfg.train.momentum,
                                         nesterov=cfg.train.nesterov, weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.train.step_size, cfg.train.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=ctx.device.type == "cuda" and cfg.train.amp)
        self.start_epoch = 1
        self.best = {"corloc": -1.0, "top1": -1.0, **{f"corloc_{method}": -1.0 for method in self.extra_map_methods()}}
        self.best_epochs: dict[str, int] = {}  # the epoch of each best-* checkpoint
        self.keeper = CheckpointKeeper(Path(job.run_dir), cfg.train.keep_last)
        self.log = MetricsLog(job.metrics_path)
        self.eval_targets = EvalTargets(split_rows(self.index.table, cfg.eval.split))
        self.check_epoch_size(self.samples_per_epoch())

    # ------------------------------------------------------------------ what a stage provides

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The stage's model, on the CPU (the runner moves and wraps it)."""

    @abstractmethod
    def samples_per_epoch(self) -> int:
        """Training samples in one epoch, over all workers."""

    @abstractmethod
    def step_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch and statistics summed over its samples (for the epoch's means)."""

    @abstractmethod
    def maps_and_predictions(self, images: torch.Tensor, labels: torch.Tensor,
                             method: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Localization maps (B, H, W) in [0, 1] and predicted classes (B,); `method`: one of
        `extra_map_methods` instead of the stage's own map."""

    def extra_map_methods(self) -> list[str]:
        """Other localization maps validated beside the stage's own, each with its best checkpoint."""
        return []

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def on_epoch_end(self) -> None:
        pass

    # ------------------------------------------------------------------ the story

    @property
    def is_chief(self) -> bool:
        return self.ctx.world_rank == 0

    @property
    def core(self) -> torch.nn.Module:
        """The model without its DDP wrapper."""
        return getattr(self.model, "module", self.model)

    def check_epoch_size(self, samples: int) -> None:
        per_worker = samples // self.ctx.world_size
        if per_worker < self.cfg.input.batch_size:
            raise ValueError(
                f"an epoch gives each of {self.ctx.world_size} worker(s) {per_worker} training samples "
                f"(input.sampling={self.cfg.input.sampling}), fewer than input.batch_size={self.cfg.input.batch_size}: "
                "lower the batch size or use input.sampling=all")

    def fit(self) -> dict:
        self.restore()
        last: dict = {}
        for epoch in range(self.start_epoch, self.cfg.train.epochs + 1):
            self.maybe_fail(epoch)
            train_metrics = self.train_epoch(next_epoch_follows=epoch < self.cfg.train.epochs, epoch=epoch)
            val_metrics = self.validate()
            self.scheduler.step()
            self.on_epoch_end()
            last = self.end_epoch(epoch, train_metrics, val_metrics)
        return last

    def restore(self) -> None:
        with self.ctx.restore_checkpoint() as folder:
            if folder is None:
                if self.is_chief:
                    self.log.keep_until(0)  # lines of epochs no checkpoint kept are trained again
                return
            state = load_state(folder, self.ctx.device)
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.load_extra_state(state.get("extra", {}))
        self.best.update(state["best"])
        self.best_epochs.update(state.get("best_epochs", {}))
        self.start_epoch = state["epoch"] + 1
        if self.is_chief:
            self.keeper.remove_leftovers()
            self.keeper.restore_best(self.best_epochs)
            self.log.keep_until(state["epoch"])

    def maybe_fail(self, epoch: int) -> None:
        marker = Path(self.job.run_dir) / f".injected-failure-epoch-{epoch}"
        if self.cfg.train.fail_at_epoch == epoch and self.is_chief and not marker.exists():
            marker.touch()
            raise InjectedFailure(f"train.fail_at_epoch={epoch}: failing once on purpose")

    def train_epoch(self, next_epoch_follows: bool = False, epoch: int = 0) -> dict:
        started = time.perf_counter()
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        waited = 0.0  # seconds blocked on the input pipeline: data-bound when close to the epoch's time
        batches = iter(self.ctx.train_batches(next_epoch_follows))
        meter = self.step_meter(epoch)
        for step in itertools.count(1):
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            with autocast_for(self.ctx.device, self.cfg):
                loss, stats = self.step_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            samples = torch.tensor(float(len(batch[LABEL])), device=self.ctx.device)
            stats = {"loss": loss.detach().float() * samples, "samples": samples, **stats}
            for name, value in stats.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
            if meter is not None:
                meter.update(step, sums)
        return {**self.epoch_means(sums, time.perf_counter() - started), "data_seconds": round(waited, 3)}

    def step_meter(self, epoch: int) -> StepMeter | None:
        """Rank 0's step progress for the driver's console, where the context has somewhere to send it."""
        if not self.is_chief or self.ctx.send_progress is None:
            return None
        steps = self.samples_per_epoch() // self.ctx.world_size // self.cfg.input.batch_size
        return StepMeter(self.ctx.send_progress, epoch, steps)

    def epoch_means(self, sums: dict[str, torch.Tensor], seconds: float) -> dict:
        names = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[n] for n in names]), self.ctx.world_size).tolist()
        totals = dict(zip(names, totals))
        samples = max(totals.pop("samples"), 1.0)
        means = {name: value / samples for name, value in totals.items()}
        if "correct" in means:
            means["top1"] = 100.0 * means.pop("correct")
        return {**means, "lr": self.optimizer.param_groups[0]["lr"], "samples": int(samples),
                "seconds": round(seconds, 3)}

    def validate(self) -> dict:
        """The eval split's metrics of the stage's map; with extra map methods also their CorLoc,
        MaxBoxAccV2 and best threshold as corloc_{method}, ... . Each worker validates its shard of the
        split (sharding.TrainAndEvalShards) and every worker returns the metrics of the whole split."""
        started = time.perf_counter()
        self.core.eval()
        methods = [None, *self.extra_map_methods()]
        evaluators = {method: LocalizationEvaluator(len(self.classes), self.classes, self.cfg.eval.thresholds,
                                                    self.cfg.eval.iou_thresholds, protocol=self.cfg.eval.protocol)
                      for method in methods}
        for batch in self.ctx.eval_batches(self.cfg.eval.split):
            images = normalise(batch[IMAGE], self.cfg.input.mean, self.cfg.input.std)
            boxes, sizes = self.eval_targets.lookup(batch[ROW])
            for method, evaluator in evaluators.items():
                maps, predictions = self.maps_and_predictions(images, batch[LABEL], method)
                evaluator.add(maps, boxes, sizes, batch[LABEL].cpu().numpy(), predictions.cpu().numpy())
        for evaluator in evaluators.values():
            self.add_other_workers_counts(evaluator)
        result = evaluators[None].result()
        for method in methods[1:]:
            extra = evaluators[method].result()
            result.update({f"{key}_{method}": extra[key] for key in EXTRA_METHOD_KEYS})
        return {**result, "seconds": round(time.perf_counter() - started, 3)}

    def add_other_workers_counts(self, evaluator: LocalizationEvaluator) -> None:
        """Each worker validated its shard of the eval split: every worker's evaluator gets the counts of all."""
        if self.ctx.world_size == 1:
            return
        mine = evaluator.state()
        names = sorted(mine)
        flat = torch.from_numpy(np.concatenate([mine[name].ravel() for name in names])).to(self.ctx.device)
        others = (all_reduce_sum(flat.clone(), self.ctx.world_size) - flat).cpu().numpy()
        ends = np.cumsum([mine[name].size for name in names])
        evaluator.merge({name: part.reshape(mine[name].shape)
                         for name, part in zip(names, np.split(others, ends[:-1]))})

    def end_epoch(self, epoch: int, train: dict, val: dict) -> dict:
        metrics = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}}
        reported = ("corloc", "top1", "maxboxacc_v2", *(f"corloc_{m}" for m in self.extra_map_methods()))
        metrics.update({f"val_{k}": val[k] for k in reported if k in val})
        folder = self.save(epoch, train, val) if self.is_chief else None
        self.ctx.report(metrics, folder)
        return metrics

    def save(self, epoch: int, train: dict, val: dict) -> Path:
        """The epoch's metrics lines, then its checkpoint, then the best-* copies it improves: each step
        on the disk before the next, so a crash anywhere loses nothing that a resume does not redo."""
        improved = [name for name in self.best if val.get(name) is not None and val[name] > self.best[name]]
        for name in improved:
            self.best[name], self.best_epochs[name] = val[name], epoch
        self.log.append({"epoch": epoch, "split": "train", **train},
                        *([{"epoch": epoch, "split": self.cfg.eval.split, **val}] if val else []))
        state = {"model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "extra": self.extra_state(), "epoch": epoch, "best": self.best, "best_epochs": self.best_epochs}
        meta = {"stage": self.stage, "epoch": epoch, "train": train, "val": {k: val.get(k) for k in self.best},
                "classes": self.classes, "dataset_fingerprint": self.index.info.fingerprint,
                "arch": self.cfg.model.arch, "backbone": backbone_layout(
                    self.cfg.model.arch, self.cfg.model.layer3_stride, self.cfg.model.layer4_stride)}
        folder = self.keeper.save_epoch(epoch, state, meta, to_dict(self.cfg))
        for name in improved:
            self.keeper.save_best(name, folder)
        return folder
