"""Opt-in experiment logging (the config's `logging` section): every epoch's train and val metrics, under
the names the report gives them (train_loss, val_corloc, ...: Tune's names too) with the epoch as the
step, and the config as parameters, to TensorBoard, MLflow and Weights & Biases.

Logged from the driver, which gets every epoch's report (progress.TrainingConsole: from Ray Train's
after_report callback, or from the in-process loop), not from rank 0: the workers' training path stays
free of logger imports, threads and I/O; a worker group that Ray restarts opens no second logger run;
the files land in the run folder of the command that trains; and scale.num_workers=0 logs the same way.
Ray's logger integrations (ray.air.integrations: MLflowLoggerCallback, WandbLoggerCallback,
TBXLoggerCallback) are Tune callbacks, which a Train V2 RunConfig does not take, so each library's own
client is used: torch's SummaryWriter, MlflowClient, wandb.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from pathlib import Path
from typing import Any, Iterator

from ..config import Config, ConfigError, to_dict
from ..config.schema import LoggingConfig

# logging.KEY -> (the module it imports, the package that provides it)
LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"),
                   "wandb": ("wandb", "wandb")}
HPARAM_METRICS = ("val_corloc", "val_maxboxacc_v2", "val_top1", "train_loss")  # TensorBoard's HParams table
MLFLOW_PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch
MLFLOW_PARAM_CHARS = 6000  # and for one parameter's value


def check_logging_packages(settings: LoggingConfig) -> None:
    """Each logger switched on has its package, before any run folder is made."""
    for name, (module, package) in LOGGER_PACKAGES.items():
        if getattr(settings, name) and importlib.util.find_spec(module) is None:
            raise ConfigError(f"logging.{name}=true needs the {package} package: pip install {package} "
                              "(or pip install 'tcam-ray[logging]')")


def flat_config(cfg: Config) -> dict[str, Any]:
    """The config as dotted keys (train.lr, ...) and leaf values."""
    flat: dict[str, Any] = {}
    pending = [("", to_dict(cfg))]
    while pending:
        prefix, section = pending.pop()
        for key, value in section.items():
            if isinstance(value, dict):
                pending.append((f"{prefix}{key}.", value))
            else:
                flat[f"{prefix}{key}"] = value
    return dict(sorted(flat.items()))


def epoch_metrics(report: dict) -> dict[str, float]:
    """The numbers of an epoch's report, without the epoch (the step) and the values it lacks (None)."""
    return {key: float(value) for key, value in report.items()
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def is_local_file_store(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file:")


class TensorBoardLog:
    """Event files in {folder}: a scalar per metric and epoch, and the config in the HParams table."""

    def __init__(self, folder: Path, params: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(folder))
        plain = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
                 for key, value in params.items()}
        for summary in hparams(plain, {name: math.nan for name in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)  # beside the scalars: one run with its hparams

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowLog:
    """A run named after the training run in the experiment `experiment`, at `tracking_uri`."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        listed = [Param(key, str(value)[:MLFLOW_PARAM_CHARS]) for key, value in params.items()]
        for start in range(0, len(listed), MLFLOW_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=listed[start:start + MLFLOW_PARAMS_PER_CALL])

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(name, value, stamp, epoch)
                                                    for name, value in metrics.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbLog:
    """A W&B run in `project` (offline by default: `wandb sync` uploads it later) under {folder}/wandb."""

    def __init__(self, mode: str, project: str, folder: Path, run_name: str, config: dict):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        # console="off": wandb leaves sys.stdout alone (the step line is redrawn on it); silent: no banner.
        self.run = wandb.init(mode=mode, project=project, name=run_name, dir=str(folder), config=config,
                              reinit="create_new", settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")  # epochs trained again after a restart are logged again

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log({"epoch": epoch, **metrics})

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class ExperimentLog:
    """The loggers a training's config switches on."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def log_epoch(self, report: dict) -> None:
        metrics = epoch_metrics(report)
        for logger in self.loggers:
            logger.log(int(report["epoch"]), metrics)

    def close(self, status: str) -> None:
        for logger in self.loggers:
            logger.close(status)


def open_loggers(cfg: Config, run_dir: Path) -> list:
    settings, name, params = cfg.logging, Path(run_dir).name, flat_config(cfg)
    loggers: list = []
    if settings.tensorboard:
        loggers.append(TensorBoardLog(Path(run_dir) / "tensorboard", params))
    if settings.mlflow:
        uri = settings.mlflow_tracking_uri or (Path(run_dir) / "mlruns").resolve().as_uri()
        loggers.append(MlflowLog(uri, settings.mlflow_experiment or name, name, params))
    if settings.wandb:
        folder = Path(settings.wandb_dir) if settings.wandb_dir else Path(run_dir)
        loggers.append(WandbLog(settings.wandb_mode, settings.wandb_project, folder, name, to_dict(cfg)))
    return loggers


@contextlib.contextmanager
def experiment_log(cfg: Config, run_dir: Path) -> Iterator[ExperimentLog | None]:
    """The training's loggers (None when the config switches none on), closed with the run's outcome."""
    if not any(getattr(cfg.logging, name) for name in LOGGER_PACKAGES):
        yield None
        return
    uri = cfg.logging.mlflow_tracking_uri or ""
    # MLflow 3 refuses its file store unless asked (and mlflow-skinny has no SQLAlchemy for sqlite:).
    allow = {"MLFLOW_ALLOW_FILE_STORE": "true"} if cfg.logging.mlflow and is_local_file_store(uri) else {}
    from .trainer import env_defaults

    with env_defaults(allow):
        log = ExperimentLog(open_loggers(cfg, run_dir))
        status = "FAILED"
        try:
            yield log
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            log.close(status)
