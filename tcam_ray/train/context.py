"""Where a training loop runs: in a Ray Train worker, or in this process (debugging, tests).

Both give the runner the same few things: its rank, its device, its batches,
the checkpoint to restart from, a way to report an epoch, and (rank 0) where its step progress goes.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import numpy as np
import pyarrow as pa
import torch

from ..config import Config
from ..data.buffers import BUFFER, VALID, neighbour_offsets, training_rows
from ..data.frames import IMAGE, LABEL, ROW, decode_batch, shots_table, split_rows
from .checkpoints import CheckpointKeeper, recorded_epoch
from .metrics_log import MetricsLog

EVAL_DTYPES = {IMAGE: torch.uint8, LABEL: torch.int64, ROW: torch.int64}
TRAIN_DTYPES = {"cam": EVAL_DTYPES, "tcam": {IMAGE: torch.uint8, BUFFER: torch.uint8, VALID: torch.bool,
                                              LABEL: torch.int64}}
PREFETCH_BATCHES = 2  # decoded batches kept ready ahead of the training step

# In-process training data: (rng) -> numpy batches of input.batch_size (last partial one dropped).
LocalSource = Callable[[np.random.Generator], Iterator[dict[str, np.ndarray]]]
SendProgress = Callable[[dict], None]  # rank 0's step progress (progress.StepMeter) to the driver
WORKERS_LOG = "workers.jsonl"  # in the run folder: a line each time a worker group starts, every rank's node


def frame_source(cfg: Config, index_table: pa.Table) -> LocalSource:
    """Stage 1 in-process: frames decoded here, shuffled, one per shot or all."""
    rows = split_rows(index_table, "train")
    if cfg.input.sampling == "one_per_shot":
        rows = shots_table(rows.select(["frame_id", "shot_id", "label", ROW]))

    def batches(rng: np.random.Generator):
        order = rng.permutation(rows.num_rows)
        for start in range(0, len(order) - cfg.input.batch_size + 1, cfg.input.batch_size):
            part = rows.take(order[start:start + cfg.input.batch_size])
            columns = {name: part[name].to_pylist() for name in part.column_names if name in ("frame_id", "frame_ids")}
            columns.update({LABEL: part[LABEL].to_numpy(), ROW: part[ROW].to_numpy()})
            yield decode_batch(columns, cfg.dataset.root, True, cfg.input.resize_size, cfg.input.crop_size,
                               cfg.input.flip, seed=int(rng.integers(2**31)))
    return batches


def buffer_source(cfg: Config, shots: pa.Table, cam_size: int, cam_dtype: str) -> LocalSource:
    """Stage 2 in-process: clips of frames with their neighbour CAM buffers, built here."""
    offsets = neighbour_offsets(cfg.tcam.n, cfg.tcam.direction)

    def batches(rng: np.random.Generator):
        rows = training_rows(shots.take(rng.permutation(shots.num_rows)), cfg.dataset.root, offsets, cam_size,
                             cam_dtype, cfg.input.resize_size, cfg.input.crop_size, cfg.input.flip,
                             every_frame=cfg.input.sampling == "all", clip=cfg.tcam.clip,
                             window=cfg.tcam.clip_window, seed=int(rng.integers(2**31)))
        size = cfg.input.batch_size
        for start in range(0, len(rows[LABEL]) - size + 1, size):
            yield {name: values[start:start + size] for name, values in rows.items()}
    return batches


class LocalContext:
    """One process, no Ray: batches are decoded here, checkpoints stay in the run folder."""

    world_rank = 0
    world_size = 1

    def __init__(self, cfg: Config, index_table: pa.Table, restore_from: Path | None = None,
                 train_source: LocalSource | None = None, on_report: Callable[[dict], None] | None = None,
                 send_progress: SendProgress | None = None):
        self.cfg = cfg
        self.index_table = index_table
        self.restore_from = restore_from
        self.train_source = train_source
        self.on_report = on_report  # the driver's console (progress.TrainingConsole.epoch)
        self.send_progress = send_progress
        self.device = torch.device("cuda" if cfg.scale.use_gpu and torch.cuda.is_available() else "cpu")
        self.rng = np.random.default_rng(cfg.train.seed)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def to_device(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.require(v, requirements="W")).to(self.device) for k, v in batch.items()}

    def train_batches(self, next_epoch_follows: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        return (self.to_device(batch) for batch in self.train_source(self.rng))

    def eval_batches(self, split: str) -> Iterator[dict[str, torch.Tensor]]:
        rows = split_rows(self.index_table, split)
        for start in range(0, rows.num_rows, self.cfg.input.batch_size):
            part = rows.slice(start, self.cfg.input.batch_size)
            columns = {"frame_id": part["frame_id"].to_pylist(), LABEL: part[LABEL].to_numpy(), ROW: part[ROW].to_numpy()}
            yield self.to_device(decode_batch(columns, self.cfg.dataset.root, False, self.cfg.input.resize_size,
                                              self.cfg.input.crop_size))

    def restore_checkpoint(self) -> ContextManager[Path | None]:
        return contextlib.nullcontext(self.restore_from)

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        if self.on_report is not None:
            self.on_report(metrics)


class EarlyStart:
    """An iterator whose first item is fetched now, in a thread (where the pipeline's start-up is paid)."""

    def __init__(self, make_iterator: Callable[[], Iterator]):
        self.first: list = []
        self.error: BaseException | None = None
        self.iterator: Iterator | None = None
        self.thread = threading.Thread(target=self.start, args=(make_iterator,), daemon=True)
        self.thread.start()

    def start(self, make_iterator: Callable[[], Iterator]) -> None:
        try:
            self.iterator = make_iterator()
            self.first = [next(self.iterator)]
        except StopIteration:
            pass
        except BaseException as error:  # re-raised in the training thread
            self.error = error

    def batches(self) -> Iterator:
        self.thread.join()
        if self.error is not None:
            raise self.error
        yield from self.first
        if self.first:
            yield from self.iterator


class RayTrainContext:
    """Inside `train_loop_per_worker`: shards from Ray Data, DDP, reports to Ray Train; `channel` (a
    callbacks.ReportChannel actor, or None) takes rank 0's step progress to the driver."""

    def __init__(self, cfg: Config, index_table: pa.Table, restore_from: Path | None, train_dtypes: dict,
                 run_dir: Path, channel=None):
        import ray.train
        import ray.train.torch

        self.cfg = cfg
        self.index_table = index_table
        self.restore_from = restore_from
        self.train_dtypes = train_dtypes
        self.run_dir = Path(run_dir)
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._ray_train = ray.train
        self.next_epoch: EarlyStart | None = None
        self.send_progress: SendProgress | None = None
        if channel is not None and self.world_rank == 0:
            self.send_progress = lambda progress: channel.put.remote("step", progress)  # not waited for
        self.record_placement(channel)

    def record_placement(self, channel) -> None:
        """Where this worker group runs, rank by rank (node, address, device): rank 0 appends it to the run
        folder's workers.jsonl and sends it to the driver's console."""
        workers = all_gathered(this_worker(self.world_rank, self.device))
        if self.world_rank == 0:
            record = {"time": time.time(), "workers": workers}
            MetricsLog(self.run_dir / WORKERS_LOG).append(record)
            if channel is not None:
                channel.put.remote("workers", record)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def train_batches(self, next_epoch_follows: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's shard. When another epoch follows, its pipeline is started as soon as this
        one runs dry, so Ray Data's start-up (seconds) overlaps validation and checkpointing."""
        started, self.next_epoch = self.next_epoch or EarlyStart(self.shard_batches), None
        yield from started.batches()
        if next_epoch_follows:
            self.next_epoch = EarlyStart(self.shard_batches)

    def shard_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        shard = self._ray_train.get_dataset_shard("train")
        return iter(shard.iter_torch_batches(batch_size=self.cfg.input.batch_size, dtypes=self.train_dtypes,
                                             device=self.device, drop_last=True, prefetch_batches=PREFETCH_BATCHES))

    def eval_batches(self, split: str) -> Iterator[dict[str, torch.Tensor]]:
        shard = self._ray_train.get_dataset_shard(split)
        return shard.iter_torch_batches(batch_size=self.cfg.input.batch_size, dtypes=EVAL_DTYPES,
                                        device=self.device)

    def restore_checkpoint(self) -> ContextManager[Path | None]:
        """The run folder's checkpoint to start from (the run's one checkpoint system, see trainer.py): the
        one the driver resumes from, or, in a worker group Ray restarted (scale.max_failures), the newest
        whole one this attempt wrote since (the run folder is on storage every node mounts)."""
        return contextlib.nullcontext(newer_checkpoint(self.run_dir, self.restore_from) or self.restore_from)

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        """The epoch's metrics to Ray Train (its callbacks, Tune), without a checkpoint: rank 0 has written
        it in the run folder (`checkpoint_dir`), and Ray keeps no second copy."""
        self._ray_train.report(metrics)


def this_worker(rank: int, device: torch.device) -> dict:
    import ray

    return {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname(), "pid": os.getpid(), "device": str(device)}


def all_gathered(item: dict) -> list[dict]:
    """Every rank's `item`, in rank order (this rank's alone without a process group)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [item]
    items: list = [None] * dist.get_world_size()
    dist.all_gather_object(items, item)
    return items


def newer_checkpoint(run_dir: Path, restore_from: Path | None) -> Path | None:
    """The newest whole checkpoint of the run folder, when it has an epoch newer than `restore_from`'s."""
    keeper = CheckpointKeeper(run_dir, keep_last=1)
    latest = keeper.latest()
    start_epoch = (recorded_epoch(restore_from) or 0) if restore_from is not None else 0
    if latest is None or (recorded_epoch(latest) or 0) <= start_epoch:
        return None
    return keeper.resume_point().folder
