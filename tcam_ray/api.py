"""The Python API: what the CLI verbs do, as calls with typed results.

    import tcam_ray

    cfg = tcam_ray.load_config("demo", {"dataset.root": "data/demo", "run.root": "runs"})
    cam = tcam_ray.train(cfg, "cam")                          # stage 1: the CAM classifier
    store = tcam_ray.fill_cam_store(cfg, cam.checkpoint)      # the CAMs of every training frame
    tcam = tcam_ray.train(cfg, "tcam", cams=store)            # stage 2: TCAM on those CAMs
    video = tcam_ray.Localizer(tcam.checkpoint).localize_video("clip.mp4")
    print(video.frames[0].box, video.frames[0].time_s)

Paths in a config are made absolute here (Ray workers run in other folders); overrides are a dict
{"section.key": value} or `--set`-style strings. Everything else runs as the CLI runs it: on the
embedded local Ray, or on the cluster at scale.address / RAY_ADDRESS.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from .config import Config, ConfigError, resolve_paths
from .config import load as _load
from .data.cam_store import StoreSummary as CamStoreSummary

if TYPE_CHECKING:
    import numpy as np
    import torch

Overrides = Mapping[str, object] | Iterable[str] | None


def override_strings(overrides: Overrides) -> list[str]:
    """{"train.lr": 0.01} -> ["train.lr=0.01"]: strings as they are, other values as JSON (a YAML subset)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides.items()]
    return list(overrides)


def load_config(path_or_name: str | Path | None = None, overrides: Overrides = None) -> Config:
    """Defaults <- the config file (a path, or the name of a config shipped with tcam-ray) <- overrides,
    with local paths made absolute against the current folder."""
    return resolve_paths(_load(path_or_name, override_strings(overrides)))


def with_overrides(cfg: Config, overrides: Overrides) -> Config:
    """`cfg` with more overrides applied (checked as --set values are)."""
    from .config import config_from_dict, to_dict
    from .config.loader import apply_overrides

    return resolve_paths(config_from_dict(apply_overrides(Config, to_dict(cfg), override_strings(overrides))))


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainedRun:
    """A finished training: its run folder and checkpoints (None where the run made none)."""
    stage: str
    run_dir: Path
    metrics: dict  # the last epoch's
    best_corloc: Path | None
    best_top1: Path | None
    last: Path | None

    @property
    def checkpoint(self) -> Path:
        """The checkpoint to use next: the best by validation CorLoc, else the last one."""
        chosen = self.best_corloc or self.last
        if chosen is None:
            raise ConfigError(f"{self.run_dir} holds no checkpoint: the run trained no epoch")
        return chosen


def train(cfg: Config, stage: str = "cam", cams: str | Path | CamStoreSummary | None = None,
          overrides: Overrides = None) -> TrainedRun:
    """Train stage 1 ("cam") or stage 2 ("tcam", on the CAM store `cams`, else tcam.cams), resuming
    the run folder {run.root}/{run.name} when it holds checkpoints. Progress lines go to stdout."""
    from .train.loop import STAGES
    from .train.trainer import run_training

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; available: {', '.join(STAGES)}")
    cfg = with_overrides(cfg, overrides)
    if cams is not None:
        cfg = with_overrides(cfg, {"tcam.cams": str(store_path(cams))})
    result = run_training(cfg, stage)
    return TrainedRun(stage, result.run_dir, result.metrics, result.best_corloc, result.best_top1, result.last)


# --------------------------------------------------------------------------- the CAM store


def store_path(cams: str | Path | CamStoreSummary) -> Path:
    return cams.path if isinstance(cams, CamStoreSummary) else Path(cams)


def fill_cam_store(cfg: Config, checkpoint: str | Path, out: str | Path | None = None) -> CamStoreSummary:
    """The CAMs (cam.method) of every training frame of cfg.dataset by the stage-1 `checkpoint`, on Ray
    Data actors, into a Parquet store at `out` (default: a new run folder's cams.parquet)."""
    from .runs import create_run_dir, run_folder
    from .train.cams import fill_cam_store as fill

    cfg = resolve_paths(cfg)
    run_dir = None if out is not None else run_folder(cfg, "cams")
    summary = fill(cfg, Path(checkpoint).resolve(), Path(out) if out is not None else run_dir / "cams.parquet")
    if run_dir is not None:
        create_run_dir(cfg, "cams", run_dir)
    return summary


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint's localization on one split (percentages, as the papers give them)."""
    split: str
    corloc: float | None  # None: no frame of the split has a box
    maxboxacc_v2: float | None
    top1: float | None
    best_threshold: float | None
    per_class: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)  # report.json as written
    folder: Path | None = None


def evaluate(checkpoint: str | Path, cfg: Config | None = None, split: str | None = None,
             out: str | Path | None = None) -> Evaluation:
    """CorLoc, MaxBoxAccV2 and top-1 of a checkpoint (either stage) on `split` (default eval.split) of
    cfg.dataset (default: the config the checkpoint was trained with); report.json and plots go to `out`
    (default: a new run folder)."""
    from .runs import create_run_dir, run_folder
    from .train.checkpoints import checkpoint_config
    from .train.evaluate import evaluate_checkpoint

    checkpoint = Path(checkpoint).resolve()
    cfg = resolve_paths(cfg or checkpoint_config(checkpoint))
    split = split or cfg.eval.split
    folder = Path(out) if out is not None else run_folder(cfg, "evaluate")
    report = evaluate_checkpoint(checkpoint, replace(cfg, eval=replace(cfg.eval, split=split)), split, folder)
    if out is None:
        create_run_dir(cfg, "evaluate", folder)
    [scores] = report["stages"].values()
    return Evaluation(split, scores.get("corloc"), scores.get("maxboxacc_v2"), scores.get("top1"),
                      scores.get("best_threshold"), scores.get("per_class", {}), report, folder)


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint's model (eval mode) with what a caller needs to feed it."""
    module: torch.nn.Module
    stage: str  # "cam" (stage 1) or "tcam" (stage 2)
    classes: list[str]
    config: Config  # the training config: input.crop_size, input.mean/std, model.*

    def __call__(self, images: torch.Tensor):
        return self.module(images)


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A checkpoint of either stage, loaded without running any code from it (tensors and plain values)."""
    import torch

    from .train.evaluate import load_model as load

    module, meta, trained = load(Path(checkpoint), torch.device(device))
    return LoadedModel(module, meta.get("stage", "cam"), list(meta["classes"]), trained)


# --------------------------------------------------------------------------- localization


@dataclass(frozen=True)
class Localization:
    """Per frame of a sequence: where the object is. Boxes are [x0, y0, x1, y1] in the frames' pixels
    (exclusive ends), smoothed along each shot unless smoothing is off; a frame judged absent
    (presence < video.min_presence) or whose map gives no box has found False and a zero box."""
    boxes: np.ndarray  # (F, 4) float
    found: np.ndarray  # (F,) bool
    scores: np.ndarray  # (F,) mean map value inside the box, 0 without one
    presence: np.ndarray  # (F,) in [0, 1]: is the object in the frame
    classes: list[str]  # (F,) the class whose map gave the box: predicted, or the one asked for
    class_scores: np.ndarray  # (F,) its softmax probability
    raw_boxes: np.ndarray  # (F, 4) each frame's own box before smoothing (zeros without one)
    times_s: np.ndarray  # (F,) each frame's time
    shots: list[tuple[int, int]]  # [start, end) frame ranges between scene cuts
    maps: np.ndarray | None  # (F, h, w) float32 in [0, 1], the localization maps (None if not kept)


@dataclass(frozen=True)
class VideoLocalization(Localization):
    """A video's localization; `folder` holds annotated.mp4, boxes.csv/json and contact_sheet.png
    when they were asked for."""
    path: Path
    width: int
    height: int
    folder: Path | None


class Localizer:
    """A checkpoint of either stage, ready to box its object in frames and videos.

    `cfg` (default: the config the checkpoint was trained with) gives video.* (threshold, min_presence,
    smooth, batch_size) and cam.method; keyword arguments override those keys."""

    def __init__(self, checkpoint: str | Path, cfg: Config | None = None, class_name: str | None = None,
                 device: str = "cpu", **video: object):
        from .train.checkpoints import checkpoint_config
        from .video.localize import Localizer as FrameLocalizer

        checkpoint = Path(checkpoint).resolve()
        cfg = cfg or checkpoint_config(checkpoint)
        settings = {f"video.{key}": value for key, value in video.items()}
        cfg = with_overrides(cfg, {**settings, "scale.use_gpu": str(device).startswith("cuda")})
        self.frame_localizer = FrameLocalizer(checkpoint, cfg, class_name)
        self.classes = self.frame_localizer.classes
        self.threshold = self.frame_localizer.threshold

    def localize(self, frames: Sequence[np.ndarray], times_s: Sequence[float] | None = None,
                 rgb: bool = True, fps: float = 25.0) -> Localization:
        """The frames of one sequence, in order (uint8 (H, W, 3), RGB unless rgb=False), all in memory."""
        import numpy as np

        frames_bgr = [np.ascontiguousarray(f[..., ::-1]) if rgb else f for f in frames]
        track = self.frame_localizer.track(frames_bgr, times_s, fps)
        return Localization(**self.track_fields(track))

    def localize_video(self, path: str | Path, out: str | Path | None = None,
                       keep_maps: bool = False) -> VideoLocalization:
        """Every frame of a video file (up to video.max_frames), its times from the container. With `out`,
        also writes out/{name}/ as `tcam-ray localize` does."""
        import numpy as np

        from .video.localize import box_scores, localize_and_write, map_levels, plan_jobs, predict_video

        path = Path(path)
        if out is not None:
            job = plan_jobs([path], out)[0]
            written, track = localize_and_write(self.frame_localizer, job, keep_maps=keep_maps)
            return VideoLocalization(**self.track_fields(track), path=path, width=written.width,
                                     height=written.height, folder=job.out_dir)
        levels: list[np.ndarray] = []
        track, video, _ = predict_video(self.frame_localizer, path, lambda maps: levels.append(map_levels(maps)),
                                        progress=lambda n: None)
        all_levels = np.concatenate(levels)
        track.scores = box_scores(all_levels, track.boxes, track.found, video.frame_size)
        track.maps = all_levels.astype(np.float32) / 255 if keep_maps else None
        width, height = video.frame_size
        return VideoLocalization(**self.track_fields(track), path=path, width=width, height=height, folder=None)

    def track_fields(self, track) -> dict:
        return dict(boxes=track.boxes, found=track.found, scores=track.scores, presence=track.presence,
                    classes=[self.classes[int(c)] for c in track.classes], class_scores=track.class_scores,
                    raw_boxes=track.raw_boxes, times_s=track.times_s, shots=track.shots, maps=track.maps)


__all__ = ["CamStoreSummary", "Evaluation", "LoadedModel", "Localization", "Localizer", "TrainedRun",
           "VideoLocalization", "evaluate", "fill_cam_store", "load_config", "load_model", "train"]
