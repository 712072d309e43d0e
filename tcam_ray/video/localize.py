"""Video in, boxes out: run a checkpoint of either stage over every frame of video files.

Per video, into `{out}/{name}/` (`name`: the file's name without suffix; `-2`,
`-3`, ... when two inputs share it):

- `annotated.mp4`: every frame with the localization map as a jet heat map,
  the box (red on white) and the class; same frame count, size and frame rate
  as the input (mp4v codec). OpenCV's FFmpeg writer rounds odd widths and
  heights down to even ones, so a video of odd width or height gets
  `annotated.avi` instead (OpenCV's own Motion-JPEG writer: exact size; its
  frame rate is stored as a whole number).
- `boxes.csv`: one row per frame: frame, time_s, class, found, x0, y0, x1, y1,
  score, threshold. Boxes are in the input's pixels, `[x0, y0, x1, y1]` with
  exclusive ends (tcam_ray/evaluation/boxes.py); `found` is 0 (and the box
  empty) when the map gives no box at the threshold.
- `boxes.json`: the same per frame, plus the video's facts, the checkpoint,
  the threshold and where it came from.
- `contact_sheet.png`: `video.sheet_frames` annotated frames spread evenly.

The map: a stage-2 (TCAM) checkpoint's foreground probability; a stage-1
checkpoint's CAM (cam.method) of the predicted class, or of `class_name` when
one is given (no label exists at inference). Frames are resized to the
checkpoint's `input.crop_size` square as in evaluation, batched through the
model (`video.batch_size`), and the box of the largest contour at the
threshold, with the evaluation's map path and threshold rule (the checkpoint's
`eval.protocol`; tcam_ray/evaluation/boxes.py), is rounded to map pixels and
scaled back to the frame.

The threshold: `video.threshold` if set; else the best threshold on val that
the checkpoint's run recorded for the checkpoint's epoch (metrics.jsonl next to
checkpoints/); else DEFAULT_THRESHOLD. The CSV and JSON say which.

Score: the mean map value inside the box (at map resolution), in [0, 1];
0 when there is no box.

Nothing here imports Ray: `distributed.py` spreads videos over a cluster with
the same `Localizer`.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..data.tensors import normalise
from ..evaluation.boxes import predict_boxes
from ..io import atomic_write_text
from ..methods.cam import compute_cam_output
from ..models.tcam import foreground_map
from ..train.checkpoints import replace_folder
from ..train.evaluate import load_model
from ..train.metrics_log import MetricsLog
from .annotate import annotate_frame, sheet_indices, sheet_tile, write_contact_sheet
from .ingest import video_name
from .reader import VideoError, VideoReader, probe

DEFAULT_THRESHOLD = 0.5
FALLBACK_FPS = 25.0  # for writing videos whose container gives no frame rate
CSV_COLUMNS = ["frame", "time_s", "class", "class_score", "found", "x0", "y0", "x1", "y1", "score", "threshold"]
OUTPUT_FILES = ("annotated.mp4", "boxes.csv", "boxes.json", "contact_sheet.png")  # .avi for odd sizes

Progress = Callable[[int], None]


# --------------------------------------------------------------------------- the threshold


def recorded_threshold(checkpoint: Path, meta: dict, split: str) -> tuple[float, str] | None:
    """The best map threshold on `split` logged for the checkpoint's epoch by its training run
    ({run}/metrics.jsonl, the checkpoint being {run}/checkpoints/{name}), if any."""
    metrics = checkpoint.resolve().parent.parent / "metrics.jsonl"
    for record in reversed(MetricsLog(metrics).records()):
        if record.get("epoch") == meta.get("epoch") and record.get("split") == split:
            value = record.get("best_threshold")
            if value is not None:
                return float(value), f"best on {split} at epoch {record['epoch']} ({metrics})"
    return None


def choose_threshold(checkpoint: Path, meta: dict, trained: Config, configured: float | None) -> tuple[float, str]:
    """(threshold, where it came from): video.threshold, else the recorded best, else the default."""
    if configured is not None:
        return configured, "video.threshold"
    recorded = recorded_threshold(checkpoint, meta, trained.eval.split)
    if recorded:
        return recorded
    return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD} (no best threshold recorded for this checkpoint)"


# --------------------------------------------------------------------------- maps and boxes


def largest_boxes(maps: np.ndarray, threshold: float, protocol: str = "wsol") -> np.ndarray:
    """(B, 4) box of the largest contour of each map at `threshold` (the protocol's rule, as the
    metric has it), in whole map pixels with exclusive ends, at least one pixel wide and high;
    [0, 0, 0, 0] when the map gives no box."""
    return np.stack([map_pixel_box(m, threshold, protocol) for m in maps])


def map_pixel_box(cam: np.ndarray, threshold: float, protocol: str) -> np.ndarray:
    height, width = cam.shape
    boxes = predict_boxes(cam, threshold, (width, height), protocol)
    if len(boxes) == 0:
        return np.zeros(4, np.int64)
    x0, y0, x1, y1 = np.rint(boxes[0]).astype(np.int64).tolist()
    x0, y0 = min(x0, width - 1), min(y0, height - 1)
    return np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)])


def scale_boxes(boxes: np.ndarray, map_size: tuple[int, int], image_size: tuple[float, float]) -> np.ndarray:
    """Boxes from map pixels to original-image pixels; sizes are (width, height)."""
    sx = image_size[0] / map_size[0]
    sy = image_size[1] / map_size[1]
    return np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])


def mean_inside(maps: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """(B,) mean map value inside each box (map pixels, exclusive ends), 0 for empty boxes;
    from one summed-area table of the batch."""
    maps = maps.double()
    table = F.pad(maps.cumsum(1).cumsum(2), (1, 0, 1, 0))
    x0, y0, x1, y1 = torch.as_tensor(boxes, dtype=torch.long, device=maps.device).unbind(1)
    rows = torch.arange(len(maps), device=maps.device)
    total = table[rows, y1, x1] - table[rows, y0, x1] - table[rows, y1, x0] + table[rows, y0, x0]
    area = ((x1 - x0) * (y1 - y0)).double()
    return torch.where(area > 0, total / area.clamp_min(1), torch.zeros_like(total))


@dataclass
class FramePredictions:
    maps: np.ndarray  # (B, h, w) float32 in [0, 1]
    classes: np.ndarray  # (B,) class index
    class_scores: np.ndarray  # (B,) softmax probability of that class
    boxes: np.ndarray  # (B, 4) in the frames' pixels
    found: np.ndarray  # (B,) bool
    scores: np.ndarray  # (B,)


class Localizer:
    """A checkpoint (either stage) ready to localize frames; holds the model."""

    def __init__(self, checkpoint: str | Path, cfg: Config, class_name: str | None = None):
        self.checkpoint = Path(checkpoint)
        self.cfg = cfg
        self.device = torch.device("cuda" if cfg.scale.use_gpu and torch.cuda.is_available() else "cpu")
        self.model, self.meta, self.trained = load_model(self.checkpoint, self.device)
        self.classes: list[str] = list(self.meta["classes"])
        self.stage = self.meta.get("stage", "cam")
        self.forced_class = self.class_index(class_name) if class_name else None
        self.size = self.trained.input.crop_size
        self.threshold, self.threshold_source = choose_threshold(self.checkpoint, self.meta, self.trained,
                                                                 cfg.video.threshold)

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise ValueError(f"class {name!r} is not one of the checkpoint's classes: {', '.join(self.classes)}")
        return self.classes.index(name)

    def model_input(self, frames: list[np.ndarray]) -> torch.Tensor:
        """BGR frames -> normalised (B, 3, S, S) at the checkpoint's eval size, as evaluation sees them."""
        size = (self.size, self.size)
        batch = np.stack([cv2.cvtColor(cv2.resize(f, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
                          for f in frames])
        images = torch.from_numpy(batch).to(self.device)
        return normalise(images, self.trained.input.mean, self.trained.input.std)

    def maps_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: the foreground map; stage 1: the CAM (cam.method) of the forced or predicted class."""
        if self.stage == "tcam":
            with torch.no_grad():
                out = self.model(images)
            return foreground_map(out.seg_logits), out.cls_logits
        target = self.forced_class  # None: the predicted class
        out = compute_cam_output(self.model, images, target, self.cfg.cam.method)
        return out.maps, out.logits

    def __call__(self, frames: list[np.ndarray]) -> FramePredictions:
        maps, logits = self.maps_and_logits(self.model_input(frames))
        maps = maps.detach().float()
        probabilities = logits.float().softmax(1)
        if self.forced_class is None:
            classes = probabilities.argmax(1)
        else:
            classes = torch.full((len(frames),), self.forced_class, dtype=torch.long, device=maps.device)
        map_boxes = largest_boxes(maps.cpu().numpy(), self.threshold, self.trained.eval.protocol)
        height, width = frames[0].shape[:2]
        return FramePredictions(
            maps=maps.cpu().numpy(), classes=classes.cpu().numpy(),
            class_scores=probabilities.gather(1, classes[:, None])[:, 0].cpu().numpy(),
            boxes=scale_boxes(map_boxes, (maps.shape[2], maps.shape[1]), (width, height)),
            found=(map_boxes[:, 2] > map_boxes[:, 0]) & (map_boxes[:, 3] > map_boxes[:, 1]),
            scores=mean_inside(maps, map_boxes).cpu().numpy())


# --------------------------------------------------------------------------- one video


@dataclass
class LocalizeJob:
    path: Path
    out_dir: Path


@dataclass
class LocalizedVideo:
    source: str
    out_dir: str
    frames: int
    fps: float
    width: int
    height: int
    frames_with_box: int
    threshold: float
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def open_writer(folder: Path, fps: float, frame_size: tuple[int, int]) -> tuple[Path, cv2.VideoWriter]:
    """mp4v in MP4 for even sizes, OpenCV's Motion-JPEG in AVI for odd ones (see the docstring)."""
    if frame_size[0] % 2 == 0 and frame_size[1] % 2 == 0:
        path, backend, fourcc = folder / "annotated.mp4", cv2.CAP_FFMPEG, "mp4v"
    else:
        path, backend, fourcc = folder / "annotated.avi", cv2.CAP_OPENCV_MJPEG, "MJPG"
    writer = cv2.VideoWriter(str(path), backend, cv2.VideoWriter_fourcc(*fourcc), fps, frame_size)
    if not writer.isOpened():
        raise VideoError(path, f"OpenCV cannot open a {fourcc} video writer here")
    return path, writer


class VideoOutputs:
    """The four outputs of one video, written into a staging folder as frames arrive."""

    def __init__(self, folder: Path, localizer: Localizer, fps: float, frame_size: tuple[int, int],
                 expected_frames: int):
        self.folder = folder
        self.localizer = localizer
        self.fps = fps
        self.frame_size = frame_size
        self.video_path, self.writer = open_writer(folder, fps, frame_size)
        self.csv_handle = (folder / "boxes.csv").open("w", newline="")
        self.csv = csv.writer(self.csv_handle)
        self.csv.writerow(CSV_COLUMNS)
        self.rows: list[dict] = []
        self.sheet_at = sheet_indices(expected_frames, localizer.cfg.video.sheet_frames)
        self.tiles: list[np.ndarray] = []

    def add(self, first: int, frames: list[np.ndarray], found: FramePredictions) -> None:
        alpha = self.localizer.cfg.video.overlay_alpha
        for offset, frame in enumerate(frames):
            index = first + offset
            row = self.row(index, found, offset)
            box = found.boxes[offset] if found.found[offset] else None
            label = f"{row['class']} {row['class_score']:.2f}  box {row['score']:.2f}"
            annotated = annotate_frame(frame, found.maps[offset], box, label, alpha)
            self.writer.write(annotated)
            if index in self.sheet_at:
                self.tiles.append(sheet_tile(annotated, f"#{index}  {row['time_s']:.2f} s"))

    def row(self, index: int, found: FramePredictions, offset: int) -> dict:
        box = [round(float(v), 2) for v in found.boxes[offset]] if found.found[offset] else None
        row = {"frame": index, "time_s": round(index / self.fps, 4),
               "class": self.localizer.classes[int(found.classes[offset])],
               "class_score": round(float(found.class_scores[offset]), 4), "found": bool(found.found[offset]),
               "box": box, "score": round(float(found.scores[offset]), 4)}
        self.rows.append(row)
        self.csv.writerow([index, row["time_s"], row["class"], row["class_score"], int(row["found"]),
                           *(box or [""] * 4), row["score"], self.localizer.threshold])
        return row

    def close(self) -> None:
        self.writer.release()
        self.csv_handle.close()

    def finish(self, facts: dict) -> None:
        self.close()
        written = probe(self.video_path)
        wanted = (len(self.rows), *self.frame_size)
        if (written.frames, written.width, written.height) != wanted:
            raise VideoError(self.video_path, f"holds {written.frames} frames of {written.width}x{written.height} "
                                              f"after writing {wanted[0]} of {wanted[1]}x{wanted[2]}")
        if self.tiles:
            write_contact_sheet(self.folder / "contact_sheet.png", self.tiles)
        localizer = self.localizer
        report = {**facts, "checkpoint": str(localizer.checkpoint.resolve()), "stage": localizer.stage,
                  "classes": localizer.classes, "threshold": localizer.threshold,
                  "threshold_source": localizer.threshold_source,
                  "score": "mean map value inside the box (map resolution); 0 without a box",
                  "box_format": "[x0, y0, x1, y1] in the video's pixels, exclusive ends",
                  "frames": self.rows}
        atomic_write_text(self.folder / "boxes.json", json.dumps(report, indent=1))


def localize_video(localizer: Localizer, job: LocalizeJob, progress: Progress | None = None) -> LocalizedVideo:
    """Localize every frame of one video; outputs appear in job.out_dir complete, or not at all
    (a folder of the same name from an earlier run is replaced)."""
    started = time.perf_counter()
    progress = progress or (lambda n: None)
    staging = job.out_dir.with_name(f".{job.out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    outputs = None
    try:
        with VideoReader(job.path, localizer.cfg.video.max_frames) as video:
            fps = video.info.fps or FALLBACK_FPS
            for first, frames in video.batches(localizer.cfg.video.batch_size):
                if outputs is None:
                    size = (frames[0].shape[1], frames[0].shape[0])
                    outputs = VideoOutputs(staging, localizer, fps, size, video.expected_frames)
                outputs.add(first, frames, localizer(frames))
                progress(len(frames))
        width, height = video.frame_size
        result = LocalizedVideo(str(job.path), str(job.out_dir), video.frames_read, fps, width, height,
                                sum(r["found"] for r in outputs.rows), localizer.threshold, 0.0)
        facts = {"video": str(Path(job.path).resolve()), "fps": fps, "fps_from_container": bool(video.info.fps),
                 "width": width, "height": height, "frame_count": video.frames_read,
                 "annotated": outputs.video_path.name, "device": str(localizer.device)}
        outputs.finish(facts)
        replace_folder(staging, job.out_dir)
    except BaseException:
        if outputs is not None:
            outputs.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.seconds = round(time.perf_counter() - started, 3)
    return result


# --------------------------------------------------------------------------- many videos


@dataclass
class LocalizeSummary:
    done: list[LocalizedVideo] = field(default_factory=list)
    failures: list[VideoError] = field(default_factory=list)

    def record(self, outcome: LocalizedVideo | VideoError) -> None:
        (self.failures if isinstance(outcome, VideoError) else self.done).append(outcome)


def plan_jobs(paths: list[Path], out: str | Path) -> list[LocalizeJob]:
    """One output folder per video under `out`, named after the file; repeats get -2, -3, ..."""
    taken: dict[str, int] = {}
    jobs = []
    for path in paths:
        name = video_name(Path(path))
        taken[name] = taken.get(name, 0) + 1
        folder = name if taken[name] == 1 else f"{name}-{taken[name]}"
        jobs.append(LocalizeJob(Path(path), Path(out).resolve() / folder))
    return jobs


def localize_one(localizer: Localizer, job: LocalizeJob,
                 progress: Progress | None = None) -> LocalizedVideo | VideoError:
    """The result, or the VideoError (also for an output that cannot be written) that stopped it."""
    try:
        return localize_video(localizer, job, progress)
    except VideoError as err:
        return err
    except OSError as err:
        return VideoError(job.path, f"cannot write its outputs in {job.out_dir}: {err}")


def localize_in_process(localizer: Localizer, jobs: list[LocalizeJob], progress: Progress | None = None,
                        on_video: Callable[[LocalizedVideo | VideoError], None] | None = None) -> LocalizeSummary:
    summary = LocalizeSummary()
    for job in jobs:
        outcome = localize_one(localizer, job, progress)
        summary.record(outcome)
        if on_video:
            on_video(outcome)
    return summary
