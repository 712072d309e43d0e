"""Ray Train's entry point on every worker, for either stage."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..config import ConfigError, config_from_dict
from ..data import FrameIndex
from .context import TRAIN_DTYPES, RayTrainContext
from .failures import user_error_in
from .runner import JobSpec, Runner


STAGES = ("cam", "tcam")


def runner_class(stage: str) -> type[Runner]:
    if stage == "cam":
        from .stage1 import Stage1Runner

        return Stage1Runner
    if stage == "tcam":
        from .stage2 import Stage2Runner

        return Stage2Runner
    raise ConfigError(f"unknown stage {stage!r}; available: {', '.join(STAGES)}")


def train_loop_per_worker(config: dict) -> dict:
    """{"cfg": the plain config dict, "job": JobSpec fields, "channel": the driver's callbacks.ReportChannel
    or None} -> the last epoch's metrics. An error the user must fix leaves the worker as itself (Ray's
    wrappers of a decode task's error dropped), so that the controller can end the run on it
    (callbacks.StopOnUserError)."""
    try:
        return run_worker(config)
    except Exception as error:
        user_error = user_error_in(error)
        if user_error is None or user_error is error:
            raise
        raise user_error from None


def run_worker(config: dict) -> dict:
    cfg = config_from_dict(config["cfg"])
    job = JobSpec(**config["job"])
    torch.set_num_threads(cfg.scale.torch_threads or max(1, int(cfg.scale.cpus_per_worker)))
    index = FrameIndex.read(job.index_path)
    resume = Path(job.resume_from) if job.resume_from else None
    ctx = RayTrainContext(cfg, index.table, resume, TRAIN_DTYPES[job.stage], Path(job.run_dir),
                          config.get("channel"))
    return runner_class(job.stage)(cfg, job, ctx).fit()


def job_dict(job: JobSpec) -> dict:
    return asdict(job)
