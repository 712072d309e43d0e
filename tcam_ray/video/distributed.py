"""`localize` spread over a Ray cluster with Ray Data: one row per video, an actor pool whose
actors each load the checkpoint once and localize whole videos, writing their outputs
straight into the output folder (which every node must see: a shared file system, as the
checkpoint and the videos). The driver only collects one small result row per video.

The only module of tcam_ray.video that imports Ray.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import ray.data

from ..config import Config, config_from_dict, to_dict
from ..data.pipeline import configure_ray_data
from ..train.failures import user_error_in
from ..train.trainer import ray_session
from .localize import LocalizedVideo, LocalizeJob, Localizer, LocalizeSummary, localize_one
from .reader import VideoError

RESULT_FIELDS = ("path", "out_dir", "error", "frames", "fps", "width", "height", "frames_with_box", "threshold",
                 "seconds")


def result_row(job: LocalizeJob, outcome: LocalizedVideo | VideoError) -> dict:
    if isinstance(outcome, VideoError):
        return {"path": str(job.path), "out_dir": str(job.out_dir), "error": outcome.reason, "frames": 0, "fps": 0.0,
                "width": 0, "height": 0, "frames_with_box": 0, "threshold": 0.0, "seconds": 0.0}
    return {"path": str(job.path), "out_dir": str(job.out_dir), "error": "", "frames": outcome.frames,
            "fps": outcome.fps, "width": outcome.width, "height": outcome.height,
            "frames_with_box": outcome.frames_with_box, "threshold": outcome.threshold, "seconds": outcome.seconds}


def outcome_of(row: dict) -> LocalizedVideo | VideoError:
    if row["error"]:
        return VideoError(row["path"], str(row["error"]))
    return LocalizedVideo(str(row["path"]), str(row["out_dir"]), int(row["frames"]), float(row["fps"]),
                          int(row["width"]), int(row["height"]), int(row["frames_with_box"]), float(row["threshold"]),
                          float(row["seconds"]))


class VideoActor:
    """Ray Data actor: holds a Localizer; each batch row is one whole video."""

    def __init__(self, checkpoint: str, cfg: dict, class_name: str | None):
        self.localizer = Localizer(checkpoint, config_from_dict(cfg), class_name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for path, out_dir in zip(batch["path"], batch["out_dir"]):
            job = LocalizeJob(Path(str(path)), Path(str(out_dir)))
            rows.append(result_row(job, localize_one(self.localizer, job)))
        return {name: np.array([row[name] for row in rows]) for name in RESULT_FIELDS}


def localize_on_ray(jobs: list[LocalizeJob], checkpoint: str | Path, cfg: Config, class_name: str | None = None,
                    on_video: Callable[[LocalizedVideo | VideoError], None] | None = None) -> LocalizeSummary:
    """Localize `jobs` on the Ray at cfg.scale.address / RAY_ADDRESS (or a local one; or the one
    already initialised in this process), `video.actors` actors of `video.cpus_per_actor` CPUs
    (and one GPU each with scale.use_gpu)."""
    summary = LocalizeSummary()
    if not jobs:
        return summary
    with ray_session(cfg.scale):
        configure_ray_data()
        rows = [{"path": str(job.path), "out_dir": str(job.out_dir)} for job in jobs]
        results = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            VideoActor,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(cfg.video.actors, len(jobs))),
            num_cpus=cfg.video.cpus_per_actor,
            num_gpus=1 if cfg.scale.use_gpu else 0,
            fn_constructor_kwargs=dict(checkpoint=str(Path(checkpoint).resolve()), cfg=to_dict(cfg),
                                       class_name=class_name),
        )
        try:
            for row in results.iter_rows():
                outcome = outcome_of(row)
                summary.record(outcome)
                if on_video:
                    on_video(outcome)
        except Exception as error:  # an actor's own error (a checkpoint it cannot load) as itself
            raise user_error_in(error) or error from None
    return summary
