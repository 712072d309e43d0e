"""One trial of a sweep: the same training as `tcam-ray train`, on Ray Train workers, inside Tune.

Tune calls `run_trial(config)` with the training config's nested dict, sampled values in place.
The trial writes an ordinary run folder ({sweep}/trials/{trial id}: config.yaml, metrics.jsonl,
checkpoints/ with best-corloc and best-top1), usable by `tcam-ray evaluate` and `tcam-ray cams`.
It builds the TorchTrainer the Ray Train V2 way: workers report every epoch with
`ray.train.report`, and `TuneReportCallback` hands rank 0's metrics (val_corloc, ...) to Tune,
whose ASHA scheduler may stop the trial at any of its rungs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import config_from_dict
from ..data import FrameIndex
from ..train.trainer import build_torch_trainer, prepare_run

TRIALS_FOLDER = "trials"


def trial_run_dir(sweep_dir: str | Path, trial_id: str) -> Path:
    return Path(sweep_dir) / TRIALS_FOLDER / trial_id


def trial_name(trial) -> str:
    """Tune's trial names and folder names: the trial id (picklable, for Tuner.restore)."""
    return trial.trial_id


def run_trial(config: dict, stage: str, sweep_dir: str, index_path: str, train_storage: str) -> None:
    """Train one sampled config; Tune learns the epochs' metrics from TuneReportCallback.

    A trial that Tuner.restore starts again finds its run folder (same trial id) and resumes from
    its last checkpoint, as `tcam-ray train` does with the same run.name."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..data.pipeline import configure_ray_data

    trial_id = tune.get_context().get_trial_id()
    cfg = config_from_dict(config)
    run_dir = trial_run_dir(sweep_dir, trial_id)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, root=str(run_dir.parent), name=trial_id))
    cfg, run_dir, job, store = prepare_run(cfg, stage, FrameIndex.read(index_path))
    configure_ray_data()
    trainer = build_torch_trainer(cfg, job, store, storage_path=train_storage, name=trial_id,
                                  callbacks=[TuneReportCallback()])
    trainer.fit()
