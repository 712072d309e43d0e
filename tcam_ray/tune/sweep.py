"""Sweep files (tune-*.yaml of the packaged configs): a search space over a training config, and how to search it.

```yaml
config: synthetic-cam.yaml      # the training config every trial starts from (relative to this file, or a
                                # packaged config's name)
stage: cam                      # cam (stage 1) or tcam (stage 2)
space:                          # dotted keys of the training config -> one distribution each
  train.lr: {loguniform: [0.005, 0.2]}
  input.batch_size: {choice: [16, 32]}
  train.momentum: {grid: [0.8, 0.9]}
num_samples: 4                  # samples of the space (every grid point num_samples times)
metric: val_corloc              # what trials report each epoch; mode max
asha: {max_t: 6, grace_period: 1, reduction_factor: 2}
```

Loading is as strict as for training configs (tcam_ray/config/loader.py): an unknown key, a
wrong type, a dotted key that is not in the training config or a value it would refuse is an
error naming the file, the key and the closest valid key. A sweep file too may be named by
its packaged name (`tcam-ray tune --config tune-synthetic`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from ..config import Config, ConfigError, load, resolve_paths, to_dict
from ..config.loader import closest_name, from_dict, read_config_file, resolve_config_file
from ..config.schema import require
from .search_space import Dimension, parse_space

# What the runner reports every epoch (tcam_ray/train/runner.py, Runner.end_epoch), as Tune sees it.
METRICS = ("val_corloc", "val_maxboxacc_v2", "val_top1", "train_loss", "train_top1")


@dataclass
class AshaSettings:
    """ASHA (asynchronous successive halving) on epochs."""

    max_t: int = 10  # epochs: every trial trains at most this many (it sets train.epochs)
    grace_period: int = 1  # epochs a trial runs before it may be stopped
    reduction_factor: float = 2.0  # at each rung, only the best 1/reduction_factor go on

    def __post_init__(self):
        require(self.max_t >= 1, "asha.max_t", f"must be at least 1 epoch, got {self.max_t}")
        require(1 <= self.grace_period <= self.max_t, "asha.grace_period",
                f"must be between 1 and asha.max_t ({self.max_t}), got {self.grace_period}")
        require(self.reduction_factor > 1, "asha.reduction_factor", f"must be > 1, got {self.reduction_factor}")


@dataclass
class SweepFile:
    """The keys a sweep file may hold."""

    config: Optional[str] = None  # the training config (relative to the sweep file, or a packaged config's name)
    stage: Literal["cam", "tcam"] = "cam"
    space: dict[str, Any] = field(default_factory=dict)  # dotted key -> {choice|grid|uniform|loguniform: ...}
    num_samples: int = 1
    metric: str = "val_corloc"
    mode: Literal["max", "min"] = "max"
    asha: AshaSettings = field(default_factory=AshaSettings)
    # Trials at once; default: as many as the cluster's CPUs (and GPUs) hold (see resources.py).
    max_concurrent_trials: Optional[int] = None
    seed: Optional[int] = None  # seed of the random sampling (same seed, same trials)

    def __post_init__(self):
        require(self.num_samples >= 1, "num_samples", "must be at least 1")
        require(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1, "max_concurrent_trials",
                "must be at least 1")


@dataclass
class Sweep:
    """A loaded sweep: its settings, its parsed space, and the training config it overlays."""

    path: Path
    settings: SweepFile
    dimensions: list[Dimension]
    base: Config  # the training config (paths resolved), train.epochs = asha.max_t

    @property
    def stage(self) -> str:
        return self.settings.stage

    @property
    def metric(self) -> str:
        return self.settings.metric

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def max_t(self) -> int:
        return self.settings.asha.max_t

    def record(self) -> dict:
        """What identifies the sweep in its folder (sweep.yaml): a rerun must match it to resume."""
        return {**to_dict(self.settings), "config": str(self.training_config_path())}

    def training_config_path(self) -> Path:
        return training_config_path(self.path, self.settings)


def training_config_path(sweep_path: Path, settings: SweepFile) -> Path:
    return resolve_config_file(settings.config, folder=sweep_path.parent).resolve()


def read_sweep_file(path: str | Path) -> SweepFile:
    path = Path(path)
    data, sources = read_config_file(path)
    origin = f" (in {' or its base '.join(map(str, sources))})"
    settings = from_dict(SweepFile, data, origin=origin)
    if not settings.config:
        raise ConfigError(f"{path}: a sweep file names its training config, e.g. 'config: synthetic-cam.yaml'")
    check_metric(settings.metric, origin)
    return settings


def check_metric(metric: str, origin: str) -> None:
    if metric not in METRICS:
        close = closest_name(metric, METRICS)
        hint = f"did you mean '{close}'?" if close else "reported metrics: " + ", ".join(METRICS)
        raise ConfigError(f"sweep key 'metric'{origin}: {metric!r} is not reported by the trials; {hint}")


def load_sweep(path: str | Path, overrides: list[str] | None = None, **settings_changes) -> Sweep:
    """The sweep file at `path` over its training config with `overrides` (--set) applied;
    `settings_changes` replace sweep settings given on the command line (None: not given)."""
    path = resolve_config_file(path)
    settings = read_sweep_file(path)
    changes = {key: value for key, value in settings_changes.items() if value is not None}
    if changes:
        settings = dataclasses.replace(settings, **changes)
    training = training_config_path(path, settings)
    for text in overrides or []:
        if text.partition("=")[0].strip() == "train.epochs":
            raise ConfigError(f"--set {text}: a sweep's trials train asha.max_t epochs ({settings.asha.max_t} in {path}); "
                              "change asha.max_t instead")
    base = resolve_paths(load(training, [*(overrides or []), f"train.epochs={settings.asha.max_t}"]))
    dimensions = parse_space(settings.space, base, str(path))
    return Sweep(path.resolve(), settings, dimensions, base)
