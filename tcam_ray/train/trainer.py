"""The driver side of a training: run folder, frame index, Ray session, TorchTrainer.

`run_training(cfg)` is what `tcam-ray train` calls. With scale.num_workers = 0
the loop runs in this process without Ray (debugging, unit tests); otherwise
on Ray Train workers of the embedded local Ray or of the cluster at
scale.address / RAY_ADDRESS. A run folder that already holds checkpoints is
resumed from its last one.

One checkpoint system: the run folder's checkpoints/ (CheckpointKeeper), written by rank 0. It is the one
that is atomic and durable, carries the state file's size and SHA-256, keeps best-* copies, and is what
a resume, `tcam-ray cams` (the CAM store's checkpoint id), `evaluate` and stage 2 read, on storage every
node mounts. Workers report only metrics to Ray Train (no `Checkpoint`), so Ray writes no second copy of
the model under ray/; a worker group Ray restarts (scale.max_failures) starts from the run folder's newest
checkpoint (context.RayTrainContext.restore_checkpoint), as a rerun of the command does.

Progress: each epoch's report reaches the driver through Ray Train's after_report callback
(callbacks.ReportToDriver) or, in-process, from the loop itself; `progress.TrainingConsole` prints its
lines and rank 0's step progress, and hands the report to the opt-in experiment loggers (experiment_log).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import viz
from ..config import Config, ConfigError, ScaleConfig, to_dict
from ..data import DatasetError, FrameIndex, index_dataset
from ..data.buffers import shots_from_store
from ..data.cam_store import CamStore, checkpoint_id
from ..runs import create_run_dir, ray_storage_path, run_folder
from .checkpoints import STATE_FILE, CheckpointKeeper, checkpoint_config, recorded_epoch
from .context import LocalContext, buffer_source, frame_source
from .experiment_log import check_logging_packages, experiment_log
from .loop import job_dict, runner_class, train_loop_per_worker
from .metrics_log import MetricsLog
from .progress import TrainingConsole
from .resume import resume_point
from .runner import JobSpec
from .stage2 import check_classifier, classifier_checkpoint

LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict  # the last epoch's
    best_corloc: Path | None
    best_top1: Path | None
    last: Path | None


def idle_worker_env(cpus: float) -> dict[str, str]:
    """Keep every decode worker process alive between passes. By default Ray keeps as many idle
    workers as it has free CPUs and kills the others after 1 s idle, so with two decode tasks per
    CPU (and fewer free CPUs while training workers hold some) each epoch started new processes
    (bench data, a pass of each baseline in between: 1200 -> 2000 frames/s on 2 CPUs). One spare
    per CPU on top: Ray starts a spare worker or two when tasks queue, and killing and restarting
    it cost each pass after a pause of a second or more 0.15-0.35 s on 2 CPUs."""
    from ..data.frames import DECODE_CPUS

    return {"RAY_num_workers_soft_limit": str(int(cpus / DECODE_CPUS + cpus))}


@contextlib.contextmanager
def env_defaults(values: dict[str, str]):
    """These environment variables where the user has not set them, for the duration of the block."""
    added = {key: value for key, value in values.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def environ_restored():
    """os.environ as it was before the block, after it: ray.init sets variables of its own in the
    driver (PYTHONBREAKPOINT, RAY_AUTH_MODE, RAY_USAGE_STATS_ENABLED) that ray.shutdown leaves set."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update({key: value for key, value in saved.items() if os.environ.get(key) != value})


@contextlib.contextmanager
def ray_session(scale: ScaleConfig, dashboard: bool = False):
    """Attach to scale.address / RAY_ADDRESS, or start a local Ray of our own on 127.0.0.1 (stopped on
    exit): never a cluster that happens to run on this machine, which `ray.init()` would join.

    `dashboard` starts the local Ray's dashboard: Tune sweeps need it, or the workers of the
    trials ASHA stops keep their CPUs (placement groups leak without it)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = scale.address or os.environ.get("RAY_ADDRESS")
    # Worker logs stay in Ray's log folder; the driver prints the epochs and steps (progress.TrainingConsole).
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    with environ_restored(), env_defaults(LOCAL_ENV if not address else {}), cluster_setting_as_in_environment():
        if address:
            ray.init(address=address, **quiet)
        else:
            with env_defaults(idle_worker_env(scale.local_cpus or os.cpu_count() or 1)):  # read by the raylet
                ray.init(address="local", num_cpus=scale.local_cpus, include_dashboard=dashboard,
                         **({"dashboard_host": "127.0.0.1"} if dashboard else {}), **quiet)
        try:
            yield
        finally:
            ray.shutdown()


@contextlib.contextmanager
def cluster_setting_as_in_environment():
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported: in a driver that imported Ray
    before the session set it (`tcam-ray demo`, a notebook), the local Ray took the machine's network
    address instead of 127.0.0.1. Ray's constant follows the environment (where it sets the switch) for the
    session's length."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    setting = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    if setting is not None:
        ray_constants.ENABLE_RAY_CLUSTER = setting.lower() in ("true", "1")
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def check_cpu_budget(scale: ScaleConfig) -> None:
    """Whole-CPU workers that take every CPU starve Ray Data's decode tasks: a hang, not an error."""
    import ray

    from ..data.frames import DECODE_RESERVE_CPUS

    total = ray.cluster_resources().get("CPU", 0)
    wanted = scale.num_workers * scale.cpus_per_worker
    if wanted + DECODE_RESERVE_CPUS > total:
        raise ConfigError(
            f"scale.num_workers={scale.num_workers} x scale.cpus_per_worker={scale.cpus_per_worker} = {wanted} CPUs "
            f"leaves less than {DECODE_RESERVE_CPUS} of the cluster's {total:g} CPUs for decoding frames (it would hang); "
            "lower scale.cpus_per_worker (fractions like 0.5 work) or scale.num_workers")


def prepare_run(cfg: Config, stage: str, index: FrameIndex | None = None, out=print
                ) -> tuple[Config, Path, JobSpec, CamStore | None]:
    """The run folder with its config and frame index (`index`, or the dataset indexed now); for
    stage tcam the CAM store (read once, checked, returned) and the model section becomes the
    stage-1 classifier's (tcam.classifier: the decoder sits on that encoder). Every check runs
    before the folder is created; a folder with checkpoints resumes from its newest whole one, if
    it is the same run (`check_resume`)."""
    runner_class(stage)  # an unknown stage fails before anything is written
    check_logging_packages(cfg.logging)
    store = read_cam_store(cfg) if stage == "tcam" else None
    if store is not None:
        classifier = classifier_checkpoint(cfg.tcam, store)
        check_classifier(classifier, store)
        cfg = dataclasses.replace(cfg, model=checkpoint_config(classifier).model)
    index = index or index_dataset(cfg.dataset)
    check_eval_split(index, cfg)
    if store is not None:
        check_cam_store(store, cfg.tcam.cams, index)
    run_dir = run_folder(cfg, f"train-{stage}")
    resume = resume_point(run_dir, cfg, stage, index, out)
    create_run_dir(cfg, f"train-{stage}", run_dir)
    index_path = run_dir / "frame_index.parquet"
    index.write(index_path)
    return cfg, run_dir, JobSpec(str(run_dir), str(index_path), stage, str(resume) if resume else None), store


def check_eval_split(index: FrameIndex, cfg: Config) -> None:
    """Training validates on eval.split every epoch: a dataset without it is refused before Ray starts."""
    if cfg.eval.split not in index.counts():
        raise DatasetError([f"{index.info.metadata}: the dataset has no {cfg.eval.split!r} split, which training "
                            f"validates on (eval.split); add one, or set --set eval.split=test"])


def read_cam_store(cfg: Config) -> CamStore:
    if not cfg.tcam.cams:
        raise ConfigError("stage tcam needs a CAM store: --set tcam.cams=PATH (made by `tcam-ray cams`)")
    return CamStore.read(cfg.tcam.cams)


def check_cam_store(store: CamStore, path: str, index: FrameIndex) -> None:
    """The store stage 2 learns from: made for this dataset, from a checkpoint still there."""
    store.check_dataset(index.info.fingerprint, path)
    state_file = Path(store.info.checkpoint) / STATE_FILE
    if not state_file.exists():
        raise DatasetError([f"{path} was made from checkpoint {store.info.checkpoint}, which is gone"])
    store.check_checkpoint(checkpoint_id(state_file), path)


def local_source(cfg: Config, job: JobSpec, index: FrameIndex, store: CamStore | None):
    if store is None:
        return frame_source(cfg, index.table)
    return buffer_source(cfg, shots_from_store(store), store.info.size, store.info.dtype)


def fit_in_process(cfg: Config, job: JobSpec, store: CamStore | None, console: TrainingConsole) -> dict:
    index = FrameIndex.read(job.index_path)
    resume = Path(job.resume_from) if job.resume_from else None
    ctx = LocalContext(cfg, index.table, resume, local_source(cfg, job, index, store), on_report=console.epoch,
                       send_progress=console.step)
    return runner_class(job.stage)(cfg, job, ctx).fit()


def ray_train_dataset(cfg: Config, index: FrameIndex, store: CamStore | None):
    from ..data.pipeline import buffer_train_dataset, train_dataset

    if store is None:
        return train_dataset(index.table, cfg)
    return buffer_train_dataset(shots_from_store(store), cfg, store.info.size, store.info.dtype)


def build_torch_trainer(cfg: Config, job: JobSpec, store: CamStore | None, storage_path: str, name: str,
                        callbacks: list | None = None, channel=None):
    """The TorchTrainer of one training (`tcam-ray train`, or one trial of a sweep): the workers
    run `train_loop_per_worker` on Ray Data shards; Ray keeps its run state (no checkpoints: see the
    module's docstring) under storage_path/name (a path or a URI Ray accepts). With `channel` (a
    callbacks.ReportChannel actor) epoch reports and rank 0's step progress go to the driver."""
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..data.pipeline import eval_dataset
    from .callbacks import ReportToDriver, StopOnUserError
    from .rendezvous import NodeAddressTorchConfig
    from .sharding import TrainAndEvalShards

    index = FrameIndex.read(job.index_path)
    to_driver = [ReportToDriver(channel)] if channel is not None else []
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "job": job_dict(job), "channel": channel},
        scaling_config=ScalingConfig(num_workers=cfg.scale.num_workers, use_gpu=cfg.scale.use_gpu,
                                     resources_per_worker={"CPU": cfg.scale.cpus_per_worker},
                                     placement_strategy=cfg.scale.placement.upper()),
        torch_config=NodeAddressTorchConfig(),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=[StopOnUserError(), *to_driver, *(callbacks or [])],
        ),
        datasets={"train": ray_train_dataset(cfg, index, store),
                  cfg.eval.split: eval_dataset(index.table, cfg, cfg.eval.split)},
        dataset_config=TrainAndEvalShards(cfg.eval.split),
    )


def fit_on_ray(cfg: Config, job: JobSpec, store: CamStore | None, console: TrainingConsole) -> dict:
    import ray

    from ..data.pipeline import configure_ray_data
    from .failures import training_failed, user_error_in

    storage = ray_storage_path(cfg.run, Path(job.run_dir))
    with ray_session(cfg.scale):
        check_cpu_budget(cfg.scale)
        configure_ray_data()
        channel = report_channel()
        trainer = build_torch_trainer(cfg, job, store, storage, name=f"attempt-{time.strftime('%Y%m%d-%H%M%S')}",
                                      channel=channel)
        try:
            result = fit_in_thread(trainer, lambda: console.handle(ray.get(channel.take.remote())))
        except Exception as error:
            raise user_error_in(error) or training_failed(error, Path(job.run_dir), ray_logs_folder()) from None
        finally:
            ray.kill(channel)
    return result.return_value or result.metrics or {}


def report_channel():
    """The callbacks.ReportChannel actor, on the driver's node: on another node, losing that node would end
    the run that scale.max_failures lets go on."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .callbacks import ReportChannel

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, scheduling_strategy=here)(ReportChannel).remote()


def fit_in_thread(trainer, while_waiting=lambda: None):
    """`trainer.fit()`, with Ctrl-C left to us: in the main thread Ray Train installs its own SIGINT
    handler, which aborts the run and ends the process (exit code 1, no word); in another thread it
    does not, and Ctrl-C reaches the waiting main thread as KeyboardInterrupt (the caller's
    `ray.shutdown()` then stops the workers; checkpoints are atomic, so none is left half-written).
    The main thread calls `while_waiting` every 0.2 s and once more when the fit has ended."""
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        while_waiting()
    while_waiting()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def ray_logs_folder() -> str:
    """The Ray session's log folder on this node (its train/ holds the workers' logs)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else "/tmp/ray/session_latest/logs"


def run_training(cfg: Config, stage: str = "cam", out=print) -> TrainResult:
    """Train (resuming the run folder's last checkpoint if any); `out` receives one line per epoch and split,
    and now and then the epoch's step progress (redrawn in place instead when `out` is print to a terminal).
    Ctrl-C ends it with an InterruptedRunError that says how to resume."""
    from .failures import interrupted

    cfg, run_dir, job, store = prepare_run(cfg, stage, out=out)
    resumed_after = (recorded_epoch(Path(job.resume_from)) or 0) if job.resume_from else 0
    try:
        with experiment_log(cfg, run_dir) as loggers:
            console = TrainingConsole(cfg.train.epochs, cfg.eval.split, out, first_epoch=resumed_after + 1,
                                      loggers=loggers, quiet_interval=cfg.logging.progress_interval)
            fit = fit_in_process if cfg.scale.num_workers == 0 else fit_on_ray
            try:
                metrics = fit(cfg, job, store, console)
            finally:
                console.clear_step()
    except KeyboardInterrupt:
        raise interrupted(run_dir) from None
    viz.plot_training_curves(MetricsLog(job.metrics_path).records(), run_dir / "curves.png")
    keeper = CheckpointKeeper(run_dir, cfg.train.keep_last)
    best = {name: keeper.best_folder(name) for name in ("corloc", "top1")}
    return TrainResult(run_dir, metrics, *(p if p.exists() else None for p in best.values()), keeper.latest())
