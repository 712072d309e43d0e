"""`tcam-ray bench data`: frames/s of the Ray Data training pipeline against torch DataLoaders
doing the same decode and augmentation with the same number of processes on the same files,
all measured in one run, steady state (after a warm-up pass).

Two baselines: the plain DataLoader the issue and the paper's code use (a Dataset that decodes one
frame per `__getitem__`, batches collated by the DataLoader), and a batched one whose every item is
a whole decode batch made by `decode_batch` (one inter-process transfer per 128 frames), which
is faster than plain and the harder one to beat."""
from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import Config
from ..data import index_dataset
from ..data.frames import DECODE_CPUS, IMAGE, LABEL, ROW, decode_batch, decode_frame, split_rows
from ..train.context import PREFETCH_BATCHES, TRAIN_DTYPES
from .common import dataset_for, log, record, scratch_dir


def decode_processes(cfg: Config) -> int:
    """How many decode tasks the local Ray runs at once (its CPUs / DECODE_CPUS): the baselines get as
    many worker processes."""
    return max(1, int((cfg.scale.local_cpus or os.cpu_count() or 1) / DECODE_CPUS))


class TrainRows(Dataset):
    """The train rows of the frame index, as the baselines' Datasets read them."""

    def __init__(self, rows: pa.Table, cfg: Config):
        self.frame_ids = rows["frame_id"].to_pylist()
        self.labels = rows[LABEL].to_numpy()
        self.rows = rows[ROW].to_numpy()
        self.cfg = cfg


class TrainFrames(TrainRows):
    """The plain baseline: one train frame per item, decoded and augmented by `decode_frame`."""

    rng: np.random.Generator | None = None  # made in each worker process, on first use

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, i: int) -> dict:
        if self.rng is None:
            cv2.setNumThreads(1)  # as decode_batch: parallelism comes from the worker processes
            self.rng = np.random.default_rng()
        cfg = self.cfg.input
        image = decode_frame(Path(self.cfg.dataset.root) / self.frame_ids[i], True, cfg.resize_size,
                             cfg.crop_size, cfg.flip, self.rng)
        return {IMAGE: torch.from_numpy(np.ascontiguousarray(image)), LABEL: int(self.labels[i]),
                ROW: int(self.rows[i])}


class TrainFrameBatches(TrainRows):
    """The batched baseline: each item is one decode batch of train frames, made by `decode_batch`."""

    def __len__(self) -> int:
        return -(-len(self.frame_ids) // self.cfg.input.decode_batch_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        size = self.cfg.input.decode_batch_size
        part = slice(i * size, (i + 1) * size)
        columns = {"frame_id": self.frame_ids[part], LABEL: self.labels[part], ROW: self.rows[part]}
        out = decode_batch(columns, self.cfg.dataset.root, True, self.cfg.input.resize_size,
                           self.cfg.input.crop_size, self.cfg.input.flip)
        return {k: torch.from_numpy(v) for k, v in out.items()}


def one_pass(batches: Iterable[dict]) -> tuple[int, float]:
    counted, started = 0, time.perf_counter()
    for batch in batches:
        counted += len(batch[IMAGE])
    return counted, time.perf_counter() - started


def alternated_rates(passes: int, pipelines: dict[str, Callable[[], Iterable[dict]]]) -> dict[str, float]:
    """Frames/s of each pipeline, timing one pass of each in turn after a warm-up pass of each, so
    that a machine whose speed drifts (shared VMs do, by several percent) weighs on all alike."""
    for epoch in pipelines.values():
        one_pass(epoch())  # workers, imports, caches
    frames, seconds = dict.fromkeys(pipelines, 0), dict.fromkeys(pipelines, 0.0)
    for _ in range(passes):
        for name, epoch in pipelines.items():
            counted, took = one_pass(epoch())
            frames[name] += counted
            seconds[name] += took
    return {name: frames[name] / seconds[name] for name in pipelines}


def ray_data_epochs(cfg: Config, index_table: pa.Table) -> Callable[[], Iterable[dict]]:
    """Passes over the training pipeline as a train worker reads it (inside a ray_session)."""
    from ..data.pipeline import configure_ray_data, train_dataset

    configure_ray_data()
    iterator = train_dataset(index_table, cfg).iterator()
    return lambda: iterator.iter_torch_batches(batch_size=cfg.input.batch_size, dtypes=TRAIN_DTYPES["cam"],
                                               prefetch_batches=PREFETCH_BATCHES)


def baseline_loaders(cfg: Config, rows: pa.Table, processes: int) -> dict[str, DataLoader]:
    # spawn: workers forked from a process whose OpenCV thread pool is running (e.g. right after
    # generating the synthetic set) hang in their first cv2 call (seen)
    common = dict(shuffle=True, num_workers=processes, persistent_workers=True, multiprocessing_context="spawn")
    return {"plain": DataLoader(TrainFrames(rows, cfg), batch_size=cfg.input.batch_size, **common),
            "batched": DataLoader(TrainFrameBatches(rows, cfg), batch_size=None, **common)}


BASELINE_NAMES = {
    "plain": "torch DataLoader, plain: a frame per __getitem__ (decode_frame), batches of {batch} collated, "
             "{processes} worker processes",
    "batched": "torch DataLoader, batched: {decode_batch} frames per __getitem__ (decode_batch), "
               "{processes} worker processes",
}


def run_data_bench(cfg: Config, repeats: int) -> Iterator[dict]:
    from ..train.trainer import ray_session

    with scratch_dir() as scratch:
        cfg = dataset_for(cfg, Path(scratch))
        index = index_dataset(cfg.dataset)
        cfg_all = cfg if cfg.input.sampling == "all" else _every_frame(cfg)
        processes = decode_processes(cfg)
        torch.set_num_threads(1)  # as in a train worker; 2 threads make Ray's batch collation crawl here
        with ray_session(cfg.scale), warnings.catch_warnings():
            # more worker processes than CPUs is the point here (as many as Ray's decode tasks)
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            loaders = baseline_loaders(cfg_all, split_rows(index.table, "train"), processes)
            pipelines = {"ray": ray_data_epochs(cfg_all, index.table),
                         **{name: (lambda loader=loader: iter(loader)) for name, loader in loaders.items()}}
            rates = alternated_rates(repeats, pipelines)
        for name, rate in rates.items():
            log(f"{name}: {rate:.0f} frames/s over {repeats} passes ({processes} decode processes)")
        settings = {"frames": index.counts()["train"], "passes": repeats, "resize": cfg.input.resize_size,
                    "crop": cfg.input.crop_size, "batch": cfg.input.batch_size,
                    "decode_batch": cfg.input.decode_batch_size, "frame_size": _frame_size(index.table)}
        for name in loaders:
            yield record("data", f"train pipeline: decode+resize+crop+flip, vs {name} DataLoader", rates["ray"],
                         "frames/s", rates[name], BASELINE_NAMES[name].format(processes=processes, **settings),
                         True, settings)


def _every_frame(cfg: Config) -> Config:
    return dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, sampling="all"))


def _frame_size(table: pa.Table) -> list[int]:
    return [int(np.median(table["width"].to_numpy())), int(np.median(table["height"].to_numpy()))]
