"""`tcam-ray bench data`: frames/s of the Ray Data training pipeline against a plain torch
DataLoader doing the same decode and augmentation with the same number of processes on the
same files, measured in one run, steady state (after a warm-up pass)."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import Config
from ..data import index_dataset
from ..data.frames import IMAGE, ROW, decode_batch
from ..data.pipeline import DECODE_CPUS, split_rows
from ..train.context import PREFETCH_BATCHES
from .common import dataset_for, log, record, scratch_dir


def decode_processes(cfg: Config) -> int:
    """How many decode tasks the local Ray runs at once (its CPUs / DECODE_CPUS): the baseline gets as many
    worker processes."""
    return max(1, int((cfg.scale.local_cpus or os.cpu_count() or 1) / DECODE_CPUS))


class FrameBatches(Dataset):
    """Batches of train frames decoded by the same function as the Ray pipeline."""

    def __init__(self, rows: pa.Table, cfg: Config):
        self.frame_ids = rows["frame_id"].to_pylist()
        self.labels = rows["label"].to_numpy()
        self.rows = rows[ROW].to_numpy()
        self.cfg = cfg
        self.batch = cfg.input.decode_batch_size

    def __len__(self) -> int:
        return (len(self.frame_ids) + self.batch - 1) // self.batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        part = slice(i * self.batch, (i + 1) * self.batch)
        columns = {"frame_id": self.frame_ids[part], "label": self.labels[part], ROW: self.rows[part]}
        out = decode_batch(columns, self.cfg.dataset.root, True, self.cfg.input.resize_size,
                           self.cfg.input.crop_size, self.cfg.input.flip)
        return {k: torch.from_numpy(v) for k, v in out.items()}


def frames_per_second(passes: int, make_iter) -> float:
    counted, started = 0, time.perf_counter()
    for _ in range(passes):
        for batch in make_iter():
            counted += len(batch[IMAGE])
    return counted / (time.perf_counter() - started)


def ray_data_rate(cfg: Config, index_table: pa.Table, passes: int) -> float:
    import ray

    from ..data.pipeline import configure_ray_data, train_dataset
    from ..train.trainer import ray_session

    dtypes = {IMAGE: torch.uint8, "label": torch.int64, ROW: torch.int64}
    torch.set_num_threads(1)  # as in a train worker; 2 threads make Ray's batch collation crawl here
    with ray_session(cfg.scale):
        configure_ray_data()
        dataset = train_dataset(index_table, cfg)
        iterator = dataset.iterator()

        def epoch():
            return iterator.iter_torch_batches(batch_size=cfg.input.batch_size, dtypes=dtypes,
                                               prefetch_batches=PREFETCH_BATCHES)

        frames_per_second(1, epoch)  # warm-up: workers, imports, caches
        rate = frames_per_second(passes, epoch)
        log(f"ray data: {rate:.0f} frames/s over {passes} passes ({ray.cluster_resources().get('CPU')} CPUs)")
    return rate


def dataloader_rate(cfg: Config, index_table: pa.Table, passes: int, processes: int) -> float:
    rows = split_rows(index_table, "train")
    # spawn: workers forked from a process whose OpenCV thread pool is running (e.g. right after
    # generating the synthetic set) hang in their first cv2 call (seen)
    loader = DataLoader(FrameBatches(rows, cfg), batch_size=None, shuffle=True, num_workers=processes,
                        persistent_workers=True, multiprocessing_context="spawn")
    frames_per_second(1, lambda: iter(loader))
    rate = frames_per_second(passes, lambda: iter(loader))
    log(f"torch DataLoader: {rate:.0f} frames/s over {passes} passes ({processes} worker processes)")
    return rate


def run_data_bench(cfg: Config, repeats: int) -> Iterator[dict]:
    with scratch_dir() as scratch:
        cfg = dataset_for(cfg, Path(scratch))
        index = index_dataset(cfg.dataset)
        cfg_all = cfg if cfg.input.sampling == "all" else _every_frame(cfg)
        frames = index.counts()["train"]
        processes = decode_processes(cfg)
        baseline = dataloader_rate(cfg_all, index.table, repeats, processes)
        ours = ray_data_rate(cfg_all, index.table, repeats)
        yield record("data", "train pipeline: decode+resize+crop+flip", ours, "frames/s", baseline,
                     f"torch DataLoader, {processes} worker processes, same decode", True,
                     {"frames": frames, "passes": repeats, "resize": cfg.input.resize_size,
                      "crop": cfg.input.crop_size, "batch": cfg.input.batch_size,
                      "decode_batch": cfg.input.decode_batch_size, "frame_size": _frame_size(index.table)})


def _every_frame(cfg: Config) -> Config:
    return dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, sampling="all"))


def _frame_size(table: pa.Table) -> list[int]:
    return [int(np.median(table["width"].to_numpy())), int(np.median(table["height"].to_numpy()))]
