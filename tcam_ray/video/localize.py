"""Video in, boxes out: run a checkpoint of either stage over every frame of video files.

Per video, into `{out}/{name}/` (`name`: the file's name without suffix; `-2`,
`-3`, ... when two inputs share it):

- `annotated.mp4`: every frame with the localization map as a jet heat map,
  the box (red on white) and a label (class, presence and box score, or
  "absent"). H.264 (libx264, yuv420p, index at the front: browsers play it),
  same frame count and size as the input, each frame at its input presentation
  time (a variable frame rate stays variable). yuv420p needs even sizes: a
  video of odd width or height gets one more column or row, a copy of its last
  one (`annotated_size` in boxes.json).
- `boxes.csv`: one row per frame: frame, time_s (the container's presentation
  time from the stream's start), shot (from the scene cuts), class,
  class_score, presence, found, x0, y0, x1, y1 (the box, smoothed along the
  shot), score, raw_x0, raw_y0, raw_x1, raw_y1 (the frame's own box before
  smoothing), threshold. Boxes are in the input's pixels, `[x0, y0, x1, y1]`
  with exclusive ends (tcam_ray/evaluation/boxes.py). `found` is 0, and both
  boxes empty, where the object is judged absent (presence below
  `video.min_presence`) or the map gives no box at the threshold.
- `boxes.json`: the same per frame, plus the video's facts (where the times
  came from, the cuts), the checkpoint, the threshold and where it came from,
  the smoothing and the presence threshold.
- `contact_sheet.png`: `video.sheet_frames` annotated frames spread evenly.

The map: a stage-2 (TCAM) checkpoint's foreground probability; a stage-1
checkpoint's CAM (cam.method) of the predicted class, or of `class_name` when
one is given (no label exists at inference). Frames are resized to the
checkpoint's `input.crop_size` square as in evaluation and batched through the
model (`video.batch_size`). A frame's own box is that of the largest contour at
the threshold, with the evaluation's map path and threshold rule (the
checkpoint's `eval.protocol`; tcam_ray/evaluation/boxes.py), rounded to map
pixels and scaled back to the frame.

The threshold: `video.threshold` if set; else the best threshold on val that
the checkpoint's run recorded for the checkpoint's epoch (metrics.jsonl next to
checkpoints/); else DEFAULT_THRESHOLD. The CSV and JSON say which.

Presence, in [0, 1]: the checkpoint's own confidence that the object is in the
frame. Stage 2: the peak of the decoder's foreground probability (a per-pixel
classifier: below 0.5 everywhere, it calls no pixel object). Stage 1 (a CAM is
min-max normalised, so its peak always is 1): the classifier's probability of
the class, rescaled so that chance (1 / classes) is 0 and certainty 1. A blank
frame (a single colour: pixel standard deviation under BLANK_STD grey levels,
a fade to black) has presence 0. Below `video.min_presence` (default 0.5: the
model's own even odds; 0 never abstains) the frame gets no box.

Smoothing (`video.smooth`, on by default), along each shot (scene cuts from
tcam_ray/video/scenes.py): a Viterbi track over a few candidate boxes per frame,
trading 1 - IoU with the frame's own box against 1 - IoU with the previous
frame's box, then each box averaged with its neighbours in time (Gaussian,
`video.smooth_sigma_s`); absent frames are gaps, never bridged. See
tcam_ray/video/track.py.

Score: the mean map value over the map pixels the (smoothed) box covers, in
[0, 1]; 0 when there is no box.

Each video is read twice: once to run the model (the maps are kept as uint8 in
a file in the output's staging folder, the boxes in memory), once to draw. Nothing
here imports Ray: `distributed.py` spreads videos over a cluster with the same
`Localizer`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from ..config import Config
from ..data.tensors import normalise
from ..errors import TcamRayError
from ..io import atomic_write_text
from ..methods.cam import compute_cam_output
from ..models.tcam import foreground_map
from ..train.checkpoints import replace_folder
from ..train.evaluate import load_model
from ..train.metrics_log import MetricsLog
from .annotate import annotate_frame, sheet_indices, sheet_tile, write_contact_sheet
from .ingest import video_name
from .reader import FALLBACK_FPS, VideoError, VideoReader, probe
from .scenes import CutSettings, SceneCutDetector, find_cuts, shot_ranges
from .track import box_areas, box_sums, fidelity, map_candidates, smooth_track
from .writer import H264Writer, coded_size

DEFAULT_THRESHOLD = 0.5
BLANK_STD = 2.0  # grey levels: a frame whose pixels vary less shows nothing (compression noise is about 1)
CSV_COLUMNS = ["frame", "time_s", "shot", "class", "class_score", "presence", "found", "x0", "y0", "x1", "y1",
               "score", "raw_x0", "raw_y0", "raw_x1", "raw_y1", "threshold"]
OUTPUT_FILES = ("annotated.mp4", "boxes.csv", "boxes.json", "contact_sheet.png")
PRESENCE = {"tcam": "peak foreground probability of the decoder's map",
            "cam": "classifier probability of the class, rescaled so that chance (1/classes) is 0"}
MAPS_FILE = ".maps.u8"  # in the staging folder, between the two reads of a video

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
    boxes, valid = map_candidates(np.asarray(maps, np.float32), threshold, protocol)
    return np.where(valid[:, :1], boxes[:, 0], 0)


def scale_boxes(boxes: np.ndarray, map_size: tuple[int, int], image_size: tuple[float, float]) -> np.ndarray:
    """Boxes (..., 4) from map pixels to original-image pixels; sizes are (width, height)."""
    sx = image_size[0] / map_size[0]
    sy = image_size[1] / map_size[1]
    return np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])


def mean_inside(maps: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """(B,) mean map value inside each box (map pixels, exclusive ends), 0 for empty boxes;
    from one summed-area table of the batch."""
    boxes = np.asarray(boxes)[:, None]
    area = torch.as_tensor(box_areas(boxes)[:, 0], device=maps.device)
    return torch.where(area > 0, box_sums(maps, boxes)[:, 0] / area.clamp_min(1), torch.zeros_like(area))


@dataclass
class FramePredictions:
    """Per frame of a batch, each frame on its own (no smoothing). `found` and `boxes` are the
    evaluation's box where the object is judged present (presence >= min_presence), else no box."""

    maps: np.ndarray  # (B, h, w) float32 in [0, 1]
    classes: np.ndarray  # (B,) class index
    class_scores: np.ndarray  # (B,) softmax probability of that class
    presence: np.ndarray  # (B,) in [0, 1]
    boxes: np.ndarray  # (B, 4) in the frames' pixels, zeros without a box
    found: np.ndarray  # (B,) bool
    scores: np.ndarray  # (B,) mean map inside the box, 0 without one
    candidates: np.ndarray  # (B, K, 4) candidate boxes in the frames' pixels, candidate 0 = `boxes`
    candidate_scores: np.ndarray  # (B, K) mean map inside each candidate
    fidelity: np.ndarray  # (B, K) the smoother's score of each (track.fidelity); -inf: none, or absent


def abstain(predictions: FramePredictions, min_presence: float) -> FramePredictions:
    """The predictions without any box (nor candidate) where presence < min_presence, or no box."""
    found = predictions.found & (predictions.presence >= min_presence)
    return dataclasses.replace(predictions, found=found, boxes=np.where(found[:, None], predictions.boxes, 0.0),
                               scores=np.where(found, predictions.scores, 0.0),
                               fidelity=np.where(found[:, None], predictions.fidelity, -np.inf))


class Localizer:
    """A checkpoint (either stage) ready to localize frames; holds the model.

    `localizer(frames)`: per-frame predictions of a batch of BGR frames. `localizer.track(frames,
    times_s)`: the boxes of a whole sequence, smoothed along its shots, with abstention."""

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
        self.min_presence = cfg.video.min_presence

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise TcamRayError(f"class {name!r} is not one of the checkpoint's classes: {', '.join(self.classes)}")
        return self.classes.index(name)

    def resized(self, frames: list[np.ndarray]) -> torch.Tensor:
        """BGR frames -> RGB uint8 (B, S, S, 3) at the checkpoint's eval size."""
        size = (self.size, self.size)
        batch = np.stack([cv2.cvtColor(cv2.resize(f, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
                          for f in frames])
        return torch.from_numpy(batch).to(self.device)

    def maps_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: the foreground map; stage 1: the CAM (cam.method) of the forced or predicted class."""
        if self.stage == "tcam":
            with torch.no_grad():
                out = self.model(images)
            return foreground_map(out.seg_logits), out.cls_logits
        target = self.forced_class  # None: the predicted class
        out = compute_cam_output(self.model, images, target, self.cfg.cam.method)
        return out.maps, out.logits

    def presence(self, maps: torch.Tensor, class_probability: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """(B,) in [0, 1]: see the module docstring."""
        if self.stage == "tcam":
            present = maps.flatten(1).amax(1)
        elif len(self.classes) > 1:
            chance = 1 / len(self.classes)
            present = ((class_probability - chance) / (1 - chance)).clamp(0, 1)
        else:
            present = torch.ones_like(class_probability)
        blank = pixels.flatten(1, 2).float().std(1).amax(1) < BLANK_STD  # every channel flat: one colour
        return torch.where(blank, torch.zeros_like(present), present)

    def __call__(self, frames: list[np.ndarray]) -> FramePredictions:
        pixels = self.resized(frames)  # normalised as evaluation sees them
        maps, logits = self.maps_and_logits(normalise(pixels, self.trained.input.mean, self.trained.input.std))
        maps = maps.detach().float()
        probabilities = logits.detach().float().softmax(1)
        if self.forced_class is None:
            classes = probabilities.argmax(1)
        else:
            classes = torch.full((len(frames),), self.forced_class, dtype=torch.long, device=maps.device)
        class_scores = probabilities.gather(1, classes[:, None])[:, 0]
        presence = self.presence(maps, class_scores, pixels).cpu().numpy()
        candidates, valid = map_candidates(maps.cpu().numpy(), self.threshold, self.trained.eval.protocol)
        means = box_sums(maps, candidates).cpu().numpy() / np.maximum(box_areas(candidates), 1)
        height, width = frames[0].shape[:2]
        frame_boxes = scale_boxes(candidates, (maps.shape[2], maps.shape[1]), (width, height))
        everything = FramePredictions(
            maps=maps.cpu().numpy(), classes=classes.cpu().numpy(), class_scores=class_scores.cpu().numpy(),
            presence=presence, boxes=frame_boxes[:, 0], found=valid[:, 0], scores=means[:, 0],
            candidates=frame_boxes, candidate_scores=means, fidelity=fidelity(frame_boxes, valid))
        return abstain(everything, self.min_presence)

    def track(self, frames: Sequence[np.ndarray], times_s: Sequence[float] | None = None,
              fps: float = 25.0) -> "Track":
        """Boxes of a sequence of BGR frames (one video's, in order), smoothed along its shots (cut
        where scenes.find_cuts finds cuts) unless video.smooth is off; frames judged absent get none.
        `times_s`: each frame's time in seconds (default: index / fps). Maps included."""
        builder = TrackBuilder(self, keep_maps=True)
        batch = self.cfg.video.batch_size
        for first in range(0, len(frames), batch):
            builder.add(self(list(frames[first:first + batch])))
        times = np.asarray(times_s, np.float64) if times_s is not None else np.arange(len(frames)) / fps
        return builder.finish(times, find_cuts(frames, CutSettings.from_config(self.cfg.video)))


# --------------------------------------------------------------------------- a sequence


@dataclass
class Track:
    """Per frame of a sequence: the (smoothed) box where the object is judged present, and the
    frame's own box before smoothing."""

    times_s: np.ndarray  # (T,)
    shots: list[tuple[int, int]]  # [start, end) frame ranges between scene cuts
    classes: np.ndarray  # (T,)
    class_scores: np.ndarray  # (T,)
    presence: np.ndarray  # (T,)
    found: np.ndarray  # (T,) bool
    boxes: np.ndarray  # (T, 4) frame pixels, zeros where not found
    scores: np.ndarray  # (T,) mean map inside the box
    raw_found: np.ndarray  # (T,) bool: the frame's own box (FramePredictions.found)
    raw_boxes: np.ndarray  # (T, 4)
    maps: np.ndarray | None = None  # (T, h, w) float32, from Localizer.track

    @property
    def cuts(self) -> list[int]:
        return [start for start, _ in self.shots[1:]]

    def shot_of(self) -> np.ndarray:
        """(T,) shot number from 1."""
        return np.repeat(np.arange(1, len(self.shots) + 1), [end - start for start, end in self.shots])


class TrackBuilder:
    """Collects a sequence's FramePredictions batch by batch (boxes only, unless keep_maps), then
    smooths them in `finish`."""

    FIELDS = ("classes", "class_scores", "presence", "boxes", "found", "candidates", "candidate_scores", "fidelity")

    def __init__(self, localizer: Localizer, keep_maps: bool = False):
        self.localizer = localizer
        self.keep_maps = keep_maps
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in (*self.FIELDS, "maps")}

    def add(self, predictions: FramePredictions) -> None:
        for name in self.FIELDS + (("maps",) if self.keep_maps else ()):
            self.parts[name].append(getattr(predictions, name))

    def finish(self, times_s: np.ndarray, cuts: list[int], smooth: bool | None = None,
               sigma_s: float | None = None) -> Track:
        """The track; `smooth` (default video.smooth) False keeps each frame's own box; `sigma_s`
        overrides video.smooth_sigma_s (0: the Viterbi track alone). Scores: the chosen candidates'
        (mean map inside), exact for the averaged boxes only where the maps were kept."""
        got = {name: np.concatenate(parts) for name, parts in self.parts.items() if parts}
        times = np.asarray(times_s, np.float64)
        shots = shot_ranges(len(got["found"]), cuts)
        video = self.localizer.cfg.video
        if not (video.smooth if smooth is None else smooth):
            return self.make_track(got, times, shots, np.where(got["found"], 0, -1), got["boxes"])
        sigma = video.smooth_sigma_s if sigma_s is None else sigma_s
        chosen, boxes = smooth_track(got["candidates"], got["fidelity"], times, shots, video.smooth_weight,
                                     video.smooth_memory_s, sigma)
        return self.make_track(got, times, shots, chosen, boxes)

    def make_track(self, got: dict[str, np.ndarray], times: np.ndarray, shots: list[tuple[int, int]],
                   chosen: np.ndarray, boxes: np.ndarray) -> Track:
        found = chosen >= 0
        scores = np.take_along_axis(got["candidate_scores"], np.maximum(chosen, 0)[:, None], axis=1)[:, 0]
        track = Track(times, shots, got["classes"], got["class_scores"], got["presence"], found,
                      np.where(found[:, None], boxes, 0.0), np.where(found, scores, 0.0), got["found"], got["boxes"],
                      got.get("maps"))
        if track.maps is not None:
            track.scores = box_scores(track.maps, track.boxes, track.found)
        return track


def box_scores(maps: np.ndarray, boxes: np.ndarray, found: np.ndarray, frame_size: tuple[int, int] | None = None,
               chunk: int = 1024) -> np.ndarray:
    """(T,) mean of each map (T, h, w: float in [0, 1], or uint8 as value / 255) inside its box, given in
    frame pixels (frame_size (width, height); default: the map's size), over the map pixels the box
    touches; 0 where not found. In chunks of frames, so a memory-mapped file of maps stays on disk."""
    height, width = maps.shape[1:]
    frame_width, frame_height = frame_size or (width, height)
    scale = np.array([width / frame_width, height / frame_height] * 2)
    scaled = np.asarray(boxes, np.float64) * scale
    cells = np.concatenate([np.floor(scaled[:, :2] + 1e-6), np.ceil(scaled[:, 2:] - 1e-6)], axis=1).astype(np.int64)
    cells = np.clip(cells, 0, [width, height, width, height])
    cells[:, 2:] = np.maximum(cells[:, 2:], np.minimum(cells[:, :2] + 1, [width, height]))
    scores = np.zeros(len(boxes))
    for first in range(0, len(boxes), chunk):
        part = torch.from_numpy(np.asarray(maps[first:first + chunk], np.float32))
        part = part / 255 if maps.dtype == np.uint8 else part
        scores[first:first + chunk] = mean_inside(part, cells[first:first + chunk]).numpy()
    return np.where(found, scores, 0.0)


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


def rounded_box(box) -> list[float]:
    return [round(float(v), 2) for v in box]


class VideoOutputs:
    """The four outputs of one video, written into a staging folder from the finished track."""

    def __init__(self, folder: Path, localizer: Localizer, track: Track, fps: float, frame_size: tuple[int, int]):
        self.folder = folder
        self.localizer = localizer
        self.track = track
        self.frame_size = frame_size
        self.video_path = folder / "annotated.mp4"
        self.writer = H264Writer(self.video_path, frame_size, fps)
        self.csv_handle = (folder / "boxes.csv").open("w", newline="")
        self.csv = csv.writer(self.csv_handle)
        self.csv.writerow(CSV_COLUMNS)
        self.shot_of = track.shot_of()
        self.rows: list[dict] = []
        self.sheet_at = sheet_indices(len(track.found), localizer.cfg.video.sheet_frames)
        self.tiles: list[np.ndarray] = []

    def add(self, index: int, frame: np.ndarray, heat: np.ndarray) -> None:
        row = self.row(index)
        box = self.track.boxes[index] if row["found"] else None
        if row["found"]:
            label = f"{row['class']} {row['presence']:.2f}  box {row['score']:.2f}"
        else:
            label = f"absent ({row['class']} {row['presence']:.2f})"
        annotated = annotate_frame(frame, heat, box, label, self.localizer.cfg.video.overlay_alpha)
        self.writer.write(annotated, row["time_s"])
        if index in self.sheet_at:
            self.tiles.append(sheet_tile(annotated, f"#{index}  {row['time_s']:.2f} s"))

    def row(self, index: int) -> dict:
        track = self.track
        found = bool(track.found[index])
        box = rounded_box(track.boxes[index]) if found else None
        raw = rounded_box(track.raw_boxes[index]) if track.raw_found[index] else None
        row = {"frame": index, "time_s": round(float(track.times_s[index]), 6), "shot": int(self.shot_of[index]),
               "class": self.localizer.classes[int(track.classes[index])],
               "class_score": round(float(track.class_scores[index]), 4),
               "presence": round(float(track.presence[index]), 4), "found": found, "box": box,
               "score": round(float(track.scores[index]), 4), "raw_box": raw}
        self.rows.append(row)
        self.csv.writerow([index, row["time_s"], row["shot"], row["class"], row["class_score"], row["presence"],
                           int(found), *(box or [""] * 4), row["score"], *(raw or [""] * 4),
                           self.localizer.threshold])
        return row

    def close(self) -> None:
        self.writer.close()
        self.csv_handle.close()

    def finish(self, facts: dict) -> None:
        self.close()
        written = probe(self.video_path)
        wanted = (len(self.rows), *coded_size(self.frame_size))
        if (written.frames, written.width, written.height) != wanted:
            raise VideoError(self.video_path, f"holds {written.frames} frames of {written.width}x{written.height} "
                                              f"after writing {wanted[0]} of {wanted[1]}x{wanted[2]}")
        if self.tiles:
            write_contact_sheet(self.folder / "contact_sheet.png", self.tiles)
        localizer, video = self.localizer, self.localizer.cfg.video
        report = {**facts, "annotated_size": list(coded_size(self.frame_size)), "cuts": self.track.cuts,
                  "checkpoint": str(localizer.checkpoint.resolve()), "stage": localizer.stage,
                  "classes": localizer.classes, "threshold": localizer.threshold,
                  "threshold_source": localizer.threshold_source,
                  "presence": PRESENCE.get(localizer.stage, PRESENCE["cam"]), "min_presence": localizer.min_presence,
                  "smoothing": ({"method": "viterbi track + temporal average", "weight": video.smooth_weight,
                                 "memory_s": video.smooth_memory_s, "sigma_s": video.smooth_sigma_s}
                                if video.smooth else {"method": "off"}),
                  "score": "mean map value inside the box (map resolution); 0 without a box",
                  "box_format": "[x0, y0, x1, y1] in the video's pixels, exclusive ends; raw_box: before smoothing",
                  "frames": self.rows}
        atomic_write_text(self.folder / "boxes.json", json.dumps(report, indent=1))


def map_levels(maps: np.ndarray) -> np.ndarray:
    """Maps in [0, 1] as uint8 levels (a quarter of float32's memory; box_scores reads either)."""
    return np.clip(maps * 255 + 0.5, 0, 255).astype(np.uint8)


class MapFile:
    """The maps of a video as uint8, appended batch by batch to a file, read back by frame."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = path.open("wb")
        self.shape: tuple[int, int] | None = None

    def append(self, maps: np.ndarray) -> None:
        self.shape = maps.shape[1:]
        self.handle.write(map_levels(maps).tobytes())

    def read(self) -> np.ndarray:
        self.handle.close()
        return np.memmap(self.path, np.uint8, "r").reshape(-1, *self.shape)


def predict_video(localizer: Localizer, path: Path, on_maps: Callable[[np.ndarray], None],
                  progress: Progress) -> tuple[Track, VideoReader, str]:
    """The first read: the model on every frame (each batch's maps handed to on_maps), the scene cuts,
    the smoothed track; and the reader (its facts) and where the frame times came from."""
    builder = TrackBuilder(localizer)
    cuts = SceneCutDetector(CutSettings.from_config(localizer.cfg.video))
    with VideoReader(path, localizer.cfg.video.max_frames) as video:
        for _, frames in video.batches(localizer.cfg.video.batch_size):
            predictions = localizer(frames)
            builder.add(predictions)
            on_maps(predictions.maps)
            for frame in frames:
                cuts.add(frame)
            progress(len(frames))
    times, time_source = video.frame_times()
    return builder.finish(times, cuts.cuts()), video, time_source


def localize_video(localizer: Localizer, job: LocalizeJob, progress: Progress | None = None) -> LocalizedVideo:
    """Localize every frame of one video; outputs appear in job.out_dir complete, or not at all
    (a folder of the same name from an earlier run is replaced)."""
    return localize_and_write(localizer, job, progress)[0]


def localize_and_write(localizer: Localizer, job: LocalizeJob, progress: Progress | None = None,
                       keep_maps: bool = False) -> tuple[LocalizedVideo, Track]:
    """`localize_video`, and the video's track (with its maps, as uint8 levels / 255, if keep_maps)."""
    started = time.perf_counter()
    staging = job.out_dir.with_name(f".{job.out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    outputs = None
    try:
        map_file = MapFile(staging / MAPS_FILE)
        track, first_read, time_source = predict_video(localizer, job.path, map_file.append,
                                                       progress or (lambda n: None))
        maps = map_file.read()
        track.scores = box_scores(maps, track.boxes, track.found, first_read.frame_size)
        fps = first_read.info.fps or FALLBACK_FPS  # nominal only: each frame keeps its own time
        outputs = VideoOutputs(staging, localizer, track, fps, first_read.frame_size)
        with VideoReader(job.path, first_read.frames_read) as video:  # the second read: drawing
            for index, frame in video:
                outputs.add(index, frame, maps[index].astype(np.float32) / 255)
        if keep_maps:
            track.maps = maps.astype(np.float32) / 255
        del maps
        map_file.path.unlink()
        width, height = first_read.frame_size
        result = LocalizedVideo(str(job.path), str(job.out_dir), video.frames_read, fps, width, height,
                                int(track.found.sum()), localizer.threshold, 0.0)
        facts = {"video": str(Path(job.path).resolve()), "fps": fps, "fps_from_container": bool(first_read.info.fps),
                 "time_source": time_source, "width": width, "height": height,
                 "frame_count": video.frames_read, "annotated": outputs.video_path.name,
                 "device": str(localizer.device)}
        outputs.finish(facts)
        replace_folder(staging, job.out_dir)
    except BaseException:
        if outputs is not None:
            outputs.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.seconds = round(time.perf_counter() - started, 3)
    return result, track


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
