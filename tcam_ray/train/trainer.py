"""The driver side of a training: run folder, frame index, Ray session, TorchTrainer.

`run_training(cfg)` is what `tcam-ray train` calls. With scale.num_workers = 0
the loop runs in this process without Ray (debugging, unit tests); otherwise
on Ray Train workers of the embedded local Ray or of the cluster at
scale.address / RAY_ADDRESS. A run folder that already holds checkpoints is
resumed from its last one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import viz
from ..config import Config, ConfigError, ScaleConfig, is_uri, to_dict
from ..data import DatasetError, FrameIndex, index_dataset
from ..data.buffers import shots_from_store
from ..data.cam_store import CamStore, checkpoint_id
from ..runs import create_run_dir, ray_storage_path, run_folder
from .checkpoints import STATE_FILE, CheckpointKeeper, checkpoint_config
from .context import LocalContext, buffer_source, frame_source
from .loop import job_dict, runner_class, train_loop_per_worker
from .metrics_log import MetricsLog
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
    from ..data.pipeline import DECODE_CPUS

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
    # Worker logs stay in Ray's log folder; the driver prints the epochs (EpochPrinter).
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    with env_defaults(LOCAL_ENV if not address else {}):
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


def check_cpu_budget(scale: ScaleConfig) -> None:
    """Whole-CPU workers that take every CPU starve Ray Data's decode tasks: a hang, not an error."""
    import ray

    from ..data.pipeline import DECODE_RESERVE_CPUS

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


def fit_in_process(cfg: Config, job: JobSpec, store: CamStore | None) -> dict:
    index = FrameIndex.read(job.index_path)
    resume = Path(job.resume_from) if job.resume_from else None
    ctx = LocalContext(cfg, index.table, resume, local_source(cfg, job, index, store))
    return runner_class(job.stage)(cfg, job, ctx).fit()


def ray_train_dataset(cfg: Config, index: FrameIndex, store: CamStore | None):
    from ..data.pipeline import buffer_train_dataset, train_dataset

    if store is None:
        return train_dataset(index.table, cfg)
    return buffer_train_dataset(shots_from_store(store), cfg, store.info.size, store.info.dtype)


def build_torch_trainer(cfg: Config, job: JobSpec, store: CamStore | None, storage_path: str, name: str,
                        callbacks: list | None = None):
    """The TorchTrainer of one training (`tcam-ray train`, or one trial of a sweep): the workers
    run `train_loop_per_worker` on Ray Data shards; Ray keeps its run state under
    storage_path/name (a path or a URI Ray accepts)."""
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..data.pipeline import eval_dataset
    from .callbacks import StopOnUserError
    from .rendezvous import NodeAddressTorchConfig

    index = FrameIndex.read(job.index_path)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "job": job_dict(job)},
        scaling_config=ScalingConfig(num_workers=cfg.scale.num_workers, use_gpu=cfg.scale.use_gpu,
                                     resources_per_worker={"CPU": cfg.scale.cpus_per_worker}),
        torch_config=NodeAddressTorchConfig(),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=[StopOnUserError(), *(callbacks or [])],
        ),
        datasets={"train": ray_train_dataset(cfg, index, store),
                  cfg.eval.split: eval_dataset(index.table, cfg, cfg.eval.split)},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def fit_on_ray(cfg: Config, job: JobSpec, store: CamStore | None) -> dict:
    from ..data.pipeline import configure_ray_data
    from .failures import training_failed, user_error_in

    storage = ray_storage_path(cfg.run, Path(job.run_dir))
    with ray_session(cfg.scale):
        check_cpu_budget(cfg.scale)
        configure_ray_data()
        trainer = build_torch_trainer(cfg, job, store, storage, name=f"attempt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            result = fit_in_thread(trainer)
        except Exception as error:
            raise user_error_in(error) or training_failed(error, Path(job.run_dir), ray_logs_folder()) from None
        finally:
            prune_ray_checkpoints(storage)
    return result.return_value or result.metrics or {}


def fit_in_thread(trainer):
    """`trainer.fit()`, with Ctrl-C left to us: in the main thread Ray Train installs its own SIGINT
    handler, which aborts the run and ends the process (exit code 1, no word); in another thread it
    does not, and Ctrl-C reaches the waiting main thread as KeyboardInterrupt (the caller's
    `ray.shutdown()` then stops the workers; checkpoints are atomic, so none is left half-written)."""
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
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def ray_logs_folder() -> str:
    """The Ray session's log folder on this node (its train/ holds the workers' logs)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else "/tmp/ray/session_latest/logs"


def prune_ray_checkpoints(storage: str) -> list[Path]:
    """Ray's copies of the run's checkpoints in {storage}/attempt-*/checkpoint_* (one model copy per attempt),
    once the attempt is over: the run folder's checkpoints/ holds the same, and resuming reads those.
    Each attempt's small state files (Ray's run snapshot, its logs) stay. Local storage only."""
    if is_uri(storage) or not Path(storage).is_dir():
        return []
    copies = [folder for attempt in Path(storage).glob("attempt-*") for folder in attempt.glob("checkpoint_*")
              if folder.is_dir()]
    for folder in copies:
        shutil.rmtree(folder, ignore_errors=True)
    return copies


class EpochPrinter:
    """Prints each new metrics.jsonl line as it appears, from a thread of the driver
    (Ray Train workers write the file; their own logs stay in Ray's log folder). Lines that a
    resume cuts and trains again are printed again."""

    def __init__(self, path: Path, epochs: int, out=print, interval: float = 0.5):
        self.log = MetricsLog(path)
        self.epochs = epochs
        self.out = out
        self.interval = interval
        self.shown = self.log.records()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def __enter__(self) -> "EpochPrinter":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join()
        self.show_new()

    def watch(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.show_new()

    def show_new(self) -> None:
        records = self.log.records()
        kept = 0  # lines shown before and still there
        while kept < min(len(records), len(self.shown)) and records[kept] == self.shown[kept]:
            kept += 1
        for record in records[kept:]:
            self.out(epoch_line(record, self.epochs))
        self.shown = records


def epoch_line(record: dict, epochs: int) -> str:
    head = f"epoch {record['epoch']}/{epochs} {record['split']:>5}:"
    if record["split"] == "train":
        waited = f", {record['data_seconds']:.1f} s waiting for data" if "data_seconds" in record else ""
        return f"{head} loss {record['loss']:.3f}  top1 {record['top1']:.1f}%  ({record.get('seconds', 0):.1f} s{waited})"
    if record.get("corloc") is None:
        return f"{head} no frames with boxes"
    return f"{head} CorLoc {record['corloc']:.1f}%  MaxBoxAccV2 {record['maxboxacc_v2']:.1f}%  top1 {record['top1']:.1f}%"


def run_training(cfg: Config, stage: str = "cam", out=print) -> TrainResult:
    """Train (resuming the run folder's last checkpoint if any); `out` receives one line per epoch and split.
    Ctrl-C ends it with an InterruptedRunError that says how to resume."""
    from .failures import interrupted

    cfg, run_dir, job, store = prepare_run(cfg, stage, out=out)
    try:
        with EpochPrinter(job.metrics_path, cfg.train.epochs, out):
            fit = fit_in_process if cfg.scale.num_workers == 0 else fit_on_ray
            metrics = fit(cfg, job, store)
    except KeyboardInterrupt:
        raise interrupted(run_dir) from None
    viz.plot_training_curves(MetricsLog(job.metrics_path).records(), run_dir / "curves.png")
    keeper = CheckpointKeeper(run_dir, cfg.train.keep_last)
    best = {name: keeper.best_folder(name) for name in ("corloc", "top1")}
    return TrainResult(run_dir, metrics, *(p if p.exists() else None for p in best.values()), keeper.latest())
