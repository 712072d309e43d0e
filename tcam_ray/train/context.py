"""Where a training loop runs: in a Ray Train worker, or in this process (debugging, tests).

Both give the runner the same few things: its rank, its device, its batches,
the checkpoint to restart from, and a way to report an epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch

from ..config import Config
from ..data.frames import IMAGE, LABEL, ROW, decode_batch, shots_table
from ..data.pipeline import split_rows

BATCH_DTYPES = {IMAGE: torch.uint8, LABEL: torch.int64, ROW: torch.int64}
PREFETCH_BATCHES = 4  # decoded batches kept ready ahead of the training step


class LocalContext:
    """One process, no Ray: batches are decoded here, checkpoints stay in the run folder."""

    world_rank = 0
    world_size = 1

    def __init__(self, cfg: Config, index_table: pa.Table, restore_from: Path | None = None):
        self.cfg = cfg
        self.index_table = index_table
        self.restore_from = restore_from
        self.device = torch.device("cuda" if cfg.scale.use_gpu and torch.cuda.is_available() else "cpu")
        self.reports: list[dict] = []
        self.rng = np.random.default_rng(cfg.train.seed)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def train_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        rows = split_rows(self.index_table, "train")
        if self.cfg.input.sampling == "one_per_shot":
            rows = shots_table(rows.select(["frame_id", "shot_id", "label", ROW]))
        order = self.rng.permutation(rows.num_rows)
        batch = self.cfg.input.batch_size
        for start in range(0, len(order) - batch + 1, batch):  # drop_last, as in the Ray path
            yield self.decode(rows.take(order[start:start + batch]), train=True)

    def eval_batches(self, split: str) -> Iterator[dict[str, torch.Tensor]]:
        rows = split_rows(self.index_table, split)
        for start in range(0, rows.num_rows, self.cfg.input.batch_size):
            yield self.decode(rows.slice(start, self.cfg.input.batch_size), train=False)

    def decode(self, rows: pa.Table, train: bool) -> dict[str, torch.Tensor]:
        columns = {name: rows[name].to_pylist() for name in rows.column_names if name in ("frame_id", "frame_ids")}
        columns.update({LABEL: rows[LABEL].to_numpy(), ROW: rows[ROW].to_numpy()})
        out = decode_batch(columns, self.cfg.dataset.root, train, self.cfg.input.resize_size, self.cfg.input.crop_size,
                           self.cfg.input.flip, seed=int(self.rng.integers(2**31)))
        return {k: torch.from_numpy(v).to(self.device) for k, v in out.items()}

    def restore_checkpoint(self) -> Path | None:
        return self.restore_from

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))


class RayTrainContext:
    """Inside `train_loop_per_worker`: shards from Ray Data, DDP, Ray Train checkpoints."""

    def __init__(self, cfg: Config, index_table: pa.Table, restore_from: Path | None = None):
        import ray.train
        import ray.train.torch

        self.cfg = cfg
        self.index_table = index_table
        self.restore_from = restore_from
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._ray_train = ray.train

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def train_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        shard = self._ray_train.get_dataset_shard("train")
        return shard.iter_torch_batches(batch_size=self.cfg.input.batch_size, dtypes=BATCH_DTYPES,
                                        device=self.device, drop_last=True, prefetch_batches=PREFETCH_BATCHES)

    def eval_batches(self, split: str) -> Iterator[dict[str, torch.Tensor]]:
        shard = self._ray_train.get_dataset_shard(split)
        return shard.iter_torch_batches(batch_size=self.cfg.input.batch_size, dtypes=BATCH_DTYPES,
                                        device=self.device)

    def restore_checkpoint(self) -> Path | None:
        """Ray's checkpoint after a worker restart; else the run's own last one (resume)."""
        checkpoint = self._ray_train.get_checkpoint()
        if checkpoint is not None:
            return Path(checkpoint.to_directory())
        return self.restore_from

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = self._ray_train.Checkpoint.from_directory(str(checkpoint_dir))
        self._ray_train.report(metrics, checkpoint=checkpoint)
