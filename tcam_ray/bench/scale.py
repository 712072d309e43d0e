"""`tcam-ray bench scale`: training throughput of stage 1 and stage 2 at 1, 2, 4, ... Ray Train workers,
up to what the cluster holds (its GPUs with scale.use_gpu, else its CPUs beside the decode reserve, at
scale.cpus_per_worker each), all in one run on one Ray session. Scaling efficiency = throughput /
(workers x the one-worker throughput of the same run). Stage 2 trains on a CAM store filled from a
one-epoch stage-1 checkpoint of the same data. Epoch 1 of each training is a warm-up."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

from ..config import Config
from ..train.cams import fill_cam_store
from ..train.trainer import ray_session, run_training
from .common import dataset_for, log, record, scratch_dir
from .train import timed_throughput


def worker_counts(cfg: Config) -> list[int]:
    """1, 2, 4, ... up to the most workers the Ray cluster can hold."""
    import ray

    from ..data.frames import DECODE_RESERVE_CPUS

    resources = ray.cluster_resources()
    if cfg.scale.use_gpu:
        most = int(resources.get("GPU", 0))
    else:
        most = int((resources.get("CPU", 0) - DECODE_RESERVE_CPUS) / cfg.scale.cpus_per_worker + 1e-9)
    counts = [1]
    while counts[-1] * 2 <= most:
        counts.append(counts[-1] * 2)
    return counts if most >= 1 else []


def stage_two_config(cfg: Config, scratch: Path) -> Config:
    """cfg with tcam.cams: the store of a one-epoch, in-process stage-1 training on the same data."""
    run = dataclasses.replace(cfg.run, root=str(scratch / "runs"), name="stage-1-for-store")
    first = dataclasses.replace(cfg, run=run, train=dataclasses.replace(cfg.train, epochs=1),
                                scale=dataclasses.replace(cfg.scale, num_workers=0))
    trained = run_training(first, out=lambda line: log(f"stage 1 for the CAM store: {line}"))
    store = fill_cam_store(cfg, trained.last, scratch / "cams.parquet")
    return dataclasses.replace(cfg, tcam=dataclasses.replace(cfg.tcam, cams=str(store.path), classifier="store"))


def run_scale_bench(cfg: Config, repeats: int, stages: tuple[str, ...] = ("cam", "tcam")) -> Iterator[dict]:
    with scratch_dir() as scratch, ray_session(cfg.scale):
        scratch = Path(scratch)
        cfg = dataset_for(cfg, scratch)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=repeats + 1),
                                  input=dataclasses.replace(cfg.input, sampling="all"))
        counts = worker_counts(cfg)
        log(f"bench scale: {counts} workers of {cfg.scale.cpus_per_worker:g} CPU"
            f"{' and 1 GPU' if cfg.scale.use_gpu else ''} each")
        for stage in stages:
            stage_cfg = stage_two_config(cfg, scratch) if stage == "tcam" else cfg
            one_worker = None
            for workers in counts:
                samples_per_s = timed_throughput(stage_cfg, scratch / "runs", f"{stage}-{workers}", workers, stage)
                one_worker = one_worker or samples_per_s
                yield record("scale", f"stage {stage}, {workers} worker(s)", samples_per_s, "samples/s",
                             workers * one_worker, "workers x the one-worker throughput", True,
                             {"stage": stage, "workers": workers, "efficiency": round(samples_per_s / (
                                 workers * one_worker), 3), "cpus_per_worker": cfg.scale.cpus_per_worker,
                              "use_gpu": cfg.scale.use_gpu, "amp": cfg.train.amp, "arch": cfg.model.arch,
                              "crop": cfg.input.crop_size, "batch": cfg.input.batch_size,
                              "timed_epochs": repeats})
