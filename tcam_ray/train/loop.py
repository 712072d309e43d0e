"""Ray Train's entry point on every worker, for either stage."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..config import config_from_dict
from ..data import FrameIndex
from .context import TRAIN_DTYPES, RayTrainContext
from .runner import JobSpec, Runner


STAGES = ("cam", "tcam")


def runner_class(stage: str) -> type[Runner]:
    if stage == "cam":
        from .stage1 import Stage1Runner

        return Stage1Runner
    if stage == "tcam":
        from .stage2 import Stage2Runner

        return Stage2Runner
    raise ValueError(f"unknown stage {stage!r}; available: {', '.join(STAGES)}")


def train_loop_per_worker(config: dict) -> dict:
    """{"cfg": the plain config dict, "job": JobSpec fields} -> the last epoch's metrics."""
    cfg = config_from_dict(config["cfg"])
    job = JobSpec(**config["job"])
    torch.set_num_threads(cfg.scale.torch_threads or max(1, int(cfg.scale.cpus_per_worker)))
    index = FrameIndex.read(job.index_path)
    resume = Path(job.resume_from) if job.resume_from else None
    ctx = RayTrainContext(cfg, index.table, resume, TRAIN_DTYPES[job.stage])
    return runner_class(job.stage)(cfg, job, ctx).fit()


def job_dict(job: JobSpec) -> dict:
    return asdict(job)
