"""Which checkpoint a rerun of a run folder resumes from, and whether it may: the newest whole one
(damaged newer ones passed over, saying so), of the same stage, dataset and settings."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, ConfigError, to_dict
from ..config.loader import changed_keys
from ..data import FrameIndex
from .checkpoints import CheckpointError, CheckpointKeeper, checkpoint_config, read_meta

# Keys a resumed run may change: they decide where and how fast it runs, or how long, not what it learns.
RESUMABLE_KEYS = ("scale.", "run.", "dataset.root", "dataset.metadata", "dataset.probe_frames",
                  "dataset.index_threads", "train.epochs", "train.keep_last", "train.fail_at_epoch", "logging.")


def resume_point(run_dir: Path, cfg: Config, stage: str, index: FrameIndex, out=print) -> Path | None:
    """The newest whole checkpoint of the run folder (damaged newer ones are passed over, saying so),
    after checking that this command continues the same run: stage, dataset and settings."""
    point = CheckpointKeeper(run_dir, cfg.train.keep_last).resume_point()
    for problem in point.skipped:
        out(f"passing over a damaged checkpoint: {problem}")
    if point.folder is None:
        if point.skipped:
            raise CheckpointError(f"{run_dir}: every checkpoint is damaged (see above); move the folder away to "
                                  "start the run again, or choose another run.name")
        return None
    check_resume(point.folder, cfg, stage, index)
    out(f"resuming {run_dir} after epoch {point.epoch} ({point.folder.name})")
    return point.folder


def check_resume(checkpoint: Path, cfg: Config, stage: str, index: FrameIndex) -> None:
    """Refuse to continue a run with another stage, dataset or training setting than it started with
    (its optimiser state and epochs would belong to another experiment than its config.yaml says)."""
    run_dir, meta = checkpoint.parent.parent, read_meta(checkpoint)
    if meta.get("stage") != stage:
        raise ConfigError(f"{run_dir} holds a stage-{meta.get('stage')} run, not stage {stage}: choose another "
                          "run.name")
    if meta.get("dataset_fingerprint") != index.info.fingerprint:
        raise ConfigError(f"{run_dir} was trained on dataset fingerprint {str(meta.get('dataset_fingerprint'))[:12]}, "
                          f"but {index.info.root} has fingerprint {index.info.fingerprint[:12]} (other frames, labels "
                          "or boxes): choose another run.name for this dataset")
    started = to_dict(checkpoint_config(checkpoint))
    changed = [(key, old, new) for key, old, new in changed_keys(started, to_dict(cfg))
               if not key.startswith(RESUMABLE_KEYS)]
    if changed:
        listed = "; ".join(f"{key}={old!r} (now {new!r})" for key, old, new in changed)
        raise ConfigError(f"{run_dir} was started with {listed}: a run resumes only with the settings it started "
                          "with (train.epochs and scale.* may change); rerun with those, or choose another run.name")
