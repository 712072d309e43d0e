"""What one trial takes from the cluster, and how many trials fit at once.

A trial is a small driver function (DRIVER_CPUS) that starts a TorchTrainer whose workers take
scale.num_workers x scale.cpus_per_worker CPUs (and a GPU each with scale.use_gpu). Ray Data's
decode tasks need DECODE_RESERVE_CPUS free beside every running trial's workers, or they never start
(a hang, see check_cpu_budget), so that much is held back from the count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ScaleConfig
from ..data.frames import DECODE_RESERVE_CPUS

# Tune holds this for the trial's driver function (`{"cpu": 0}` is refused; 0.1 measured to work).
DRIVER_CPUS = 0.1
ROUNDING = 1e-9  # 2 CPUs / 0.5 per trial is 4, not 3.999...


@dataclass(frozen=True)
class TrialResources:
    cpus: float  # driver + workers
    gpus: float

    @classmethod
    def of(cls, scale: ScaleConfig) -> "TrialResources":
        if scale.num_workers < 1:
            raise ValueError("scale.num_workers=0 trains in one process without Ray Train; a sweep's trials run "
                             "on Ray Train workers: set scale.num_workers to 1 or more")
        gpus = float(scale.num_workers) if scale.use_gpu else 0.0
        return cls(DRIVER_CPUS + scale.num_workers * scale.cpus_per_worker, gpus)

    def describe(self) -> str:
        gpus = f" + {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.cpus:g} CPU{gpus}"


def trials_that_fit(need: TrialResources, cluster: dict) -> int:
    """Trials the cluster's current CPUs (less DECODE_RESERVE_CPUS) and GPUs hold at once."""
    cpus = cluster.get("CPU", 0.0) - DECODE_RESERVE_CPUS
    fit = math.floor(cpus / need.cpus + ROUNDING) if cpus > 0 else 0
    if need.gpus:
        fit = min(fit, math.floor(cluster.get("GPU", 0.0) / need.gpus + ROUNDING))
    return fit


def max_concurrent_trials(need: TrialResources, cluster: dict, requested: int | None) -> int:
    """`requested` (the sweep's max_concurrent_trials) if given, else what the cluster holds now."""
    if requested is not None:
        return requested
    fit = trials_that_fit(need, cluster)
    if fit < 1:
        have = f"{cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU"
        raise ValueError(
            f"one trial needs {need.describe()} plus {DECODE_RESERVE_CPUS:g} CPU left for decoding frames, but the cluster "
            f"has {have}: lower scale.cpus_per_worker or scale.num_workers, or, on an autoscaling cluster that "
            "adds nodes on demand, set max_concurrent_trials in the sweep file")
    return fit
