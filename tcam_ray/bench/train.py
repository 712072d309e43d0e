"""`tcam-ray bench train`: training throughput of one Ray Train worker against the same loop
run in this process without Ray (same data, model, batch size and thread count), in one run.
Epoch 1 is a warm-up; the figure is samples / seconds spent in train steps over the rest."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import torch

from ..config import Config
from ..train.metrics_log import MetricsLog
from ..train.trainer import run_training
from .common import dataset_for, log, record, scratch_dir

THREADS = 1


def throughput(cfg: Config, run_root: Path, name: str, workers: int) -> float:
    scale = dataclasses.replace(cfg.scale, cpus_per_worker=float(THREADS))
    return timed_throughput(dataclasses.replace(cfg, scale=scale), run_root, name, workers)


def timed_throughput(cfg: Config, run_root: Path, name: str, workers: int, stage: str = "cam") -> float:
    """Training samples per second of train-step time over the epochs after the first (a warm-up),
    all workers together (each epoch record counts the samples of every worker)."""
    run = dataclasses.replace(cfg.run, root=str(run_root), name=name)
    scale = dataclasses.replace(cfg.scale, num_workers=workers, max_failures=0)
    run_training(dataclasses.replace(cfg, run=run, scale=scale), stage, out=lambda line: log(f"{name}: {line}"))
    epochs = [r for r in MetricsLog(run_root / name / "metrics.jsonl").records() if r["split"] == "train"][1:]
    return sum(r["samples"] for r in epochs) / sum(r["seconds"] for r in epochs)


def run_train_bench(cfg: Config, repeats: int) -> Iterator[dict]:
    with scratch_dir() as scratch:
        scratch = Path(scratch)
        cfg = dataset_for(cfg, scratch)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=repeats + 1),
                                  input=dataclasses.replace(cfg.input, sampling="all"))
        previous = torch.get_num_threads()
        torch.set_num_threads(THREADS)
        try:
            baseline = throughput(cfg, scratch / "runs", "in-process", workers=0)
        finally:
            torch.set_num_threads(previous)
        ours = throughput(cfg, scratch / "runs", "ray-train", workers=1)
        yield record("train", "stage-1 train steps, 1 worker", ours, "samples/s", baseline,
                     "same loop in-process without Ray", True,
                     {"arch": cfg.model.arch, "crop": cfg.input.crop_size, "batch": cfg.input.batch_size,
                      "threads": THREADS, "timed_epochs": repeats})
