"""`tcam-ray tune`: run a sweep (or resume one) with Ray Tune and ASHA, then write its results.

The sweep folder ({run.root}/{run.name}, default tune-{timestamp}):

    sweep.yaml, config.yaml    the sweep and the training config it started from
    .tcam-ray-owner.json       the owner marker: this user's tcam-ray started the sweep (below)
    frame_index.parquet        the dataset, indexed once for every trial
    trials/{trial id}/         each trial's run folder (as `tcam-ray train` writes)
    ray/                       Ray's state (unless run.storage): tune/ (Tune's experiment, for
                               Tuner.restore) and train/{trial id}/ (Ray Train's run state)
    results.csv, best.yaml, {metric}.png

Running the same sweep into the same folder again restores the Tune experiment
(`Tuner.restore(resume_errored=True)`): finished trials stay, errored and unfinished ones go on
from their last checkpoint. Tune's state is pickled Python, which runs code when loaded, so only a
folder that this user's tcam-ray started resumes: a new sweep writes an owner marker,
.tcam-ray-owner.json, and a folder whose Tune experiment holds anything must carry one that
verifies under the user's key, else the sweep stops before Ray starts (trust.py; the marker stays
in this folder when run.storage is a URI). `trust_sweep_state` (--trust-sweep-state) marks a sweep
the user started before markers existed: only for sweeps you started.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from ..config import ConfigError, is_uri, to_dict
from ..config.loader import changed_keys
from ..data import index_dataset
from ..io import atomic_write_text
from ..runs import join_storage, ray_storage_path, upload_files
from ..train.trainer import ray_session
from . import results, trust
from .resources import DRIVER_CPUS, TrialResources, max_concurrent_trials
from .search_space import param_space
from .sweep import Sweep
from .trial import run_trial, trial_name

EXPERIMENT = "tune"  # Tune's experiment folder inside the sweep's Ray storage
SWEEP_FILE, CONFIG_FILE, INDEX_FILE = "sweep.yaml", "config.yaml", "frame_index.parquet"
Say = Callable[[str], None]


@dataclass
class SweepResult:
    sweep_dir: Path
    experiment: str  # Tune's experiment path (a folder or a URI)
    resumed: bool
    rows: list[results.TrialRow]
    table: str
    csv: Path
    best_yaml: Path | None
    plot: Path

    @property
    def best(self) -> results.TrialRow | None:
        return self.rows[0] if self.rows and self.rows[0].best is not None else None


def sweep_folder(sweep: Sweep) -> Path:
    return Path(sweep.base.run.root) / (sweep.base.run.name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}")


def prepare_sweep_folder(sweep: Sweep, sweep_dir: Path) -> None:
    """Write the sweep and its training config; in a folder that has them, they must be the same
    (but for scale.address: a sweep may go on from another machine of the cluster)."""
    wanted = {SWEEP_FILE: sweep.record(), CONFIG_FILE: to_dict(sweep.base)}
    for name, data in wanted.items():
        path = sweep_dir / name
        if path.exists():
            stored = yaml.safe_load(path.read_text())
            if name == CONFIG_FILE:
                stored["scale"]["address"] = data["scale"]["address"]
            check_same(stored, data, path)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for name, data in wanted.items():
        atomic_write_text(sweep_dir / name, yaml.safe_dump(data, sort_keys=False))


def check_same(stored: dict, wanted: dict, path: Path) -> None:
    """A sweep resumes only with the settings it started with (Tune cannot change a space midway)."""
    changes = changed_keys(stored, wanted)
    if changes:
        dotted, old, new = changes[0]
        raise ConfigError(f"{path.parent} holds a sweep started with {dotted}={old!r} (in {path}), not {new!r}: "
                          "resume it with the same sweep file and --set values, or choose another run.name")


def index_once(sweep: Sweep, path: Path) -> None:
    """The frame index every trial shares: made when the sweep starts, kept when it resumes."""
    if not path.exists():
        index_dataset(sweep.base.dataset).write(path)


def make_trainable(sweep: Sweep, sweep_dir: Path, storage: str):
    from ray import tune

    trial = tune.with_parameters(run_trial, stage=sweep.stage, sweep_dir=str(sweep_dir),
                                 index_path=str(sweep_dir / INDEX_FILE), train_storage=join_storage(storage, "train"))
    return tune.with_resources(trial, {"cpu": DRIVER_CPUS})


def new_tuner(sweep: Sweep, trainable, storage: str, concurrent: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from .reporter import EpochReporter

    asha = sweep.settings.asha
    scheduler = ASHAScheduler(time_attr="epoch", max_t=asha.max_t, grace_period=asha.grace_period,
                              reduction_factor=asha.reduction_factor)
    tune_config = tune.TuneConfig(
        metric=sweep.metric, mode=sweep.mode, scheduler=scheduler, num_samples=sweep.settings.num_samples,
        # The concurrency goes to the search algorithm: Tune ignores max_concurrent_trials beside one.
        search_alg=BasicVariantGenerator(random_state=sweep.settings.seed, max_concurrent=concurrent),
        trial_name_creator=trial_name, trial_dirname_creator=trial_name)
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=storage, verbose=0,
                                callbacks=[EpochReporter(sweep.metric, sweep.max_t)])
    return tune.Tuner(trainable, param_space=param_space(sweep.base, sweep.dimensions), tune_config=tune_config,
                      run_config=run_config)


def run_sweep(sweep: Sweep, say: Say = print, trust_sweep_state: bool = False) -> SweepResult:
    """Run the sweep (resuming its folder's Tune experiment if there is one: only a sweep of this
    user's, or any with `trust_sweep_state`) and write its results."""
    from ray import tune

    sweep_dir = sweep_folder(sweep)
    storage = ray_storage_path(sweep.base.run, sweep_dir)
    experiment = join_storage(storage, EXPERIMENT)
    mark = trust.check_sweep_folder(sweep_dir, experiment, trust_sweep_state, say)
    prepare_sweep_folder(sweep, sweep_dir)
    if mark:
        trust.mark_owner(sweep_dir)
    index_once(sweep, sweep_dir / INDEX_FILE)
    need = TrialResources.of(sweep.base.scale)
    with ray_session(sweep.base.scale, dashboard=True):
        import ray

        trainable = make_trainable(sweep, sweep_dir, storage)
        resumed = tune.Tuner.can_restore(experiment)
        if resumed:
            say(f"resuming the sweep in {sweep_dir} (Tune experiment {experiment})")
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
        else:
            concurrent = max_concurrent_trials(need, ray.cluster_resources(), sweep.settings.max_concurrent_trials)
            say(f"sweep {sweep_dir}: {len(sweep.dimensions)} searched keys, {sweep.settings.num_samples} sample(s), "
                f"each trial {need.describe()}, {concurrent} at once; ASHA on {sweep.metric} ({sweep.mode}) "
                f"up to {sweep.max_t} epochs")
            tuner = new_tuner(sweep, trainable, storage, concurrent)
        tuner.fit()
        analysis = tune.ExperimentAnalysis(experiment)
    result = write_results(sweep, sweep_dir, experiment, resumed, analysis)
    if is_uri(storage):
        upload_files([path for path in (result.csv, result.plot, result.best_yaml) if path], storage)
    return result


def write_results(sweep: Sweep, sweep_dir: Path, experiment: str, resumed: bool, analysis) -> SweepResult:
    rows = results.collect_rows(analysis, sweep, sweep_dir)
    csv_path = results.write_csv(rows, sweep, sweep_dir / "results.csv")
    plot = results.plot_curves(rows, sweep, sweep_dir / f"{sweep.metric}.png")
    result = SweepResult(sweep_dir, experiment, resumed, rows, results.format_table(rows, sweep), csv_path, None, plot)
    if result.best is not None:
        result.best_yaml = results.write_best_yaml(result.best, sweep, sweep_dir / "best.yaml")
    return result
