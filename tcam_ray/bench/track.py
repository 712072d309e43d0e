"""`tcam-ray bench track`: the localizer's boxes along each shot of a split, smoothed (video.smooth's
Viterbi track) against each frame's own box, with and without abstention (video.min_presence).
The records' config also holds `viterbi_only`: the Viterbi track without the temporal average
(smooth_sigma_s 0), which tells the two steps' shares apart.

Per case, over the split's shots (every frame of each shot on disk, in order, at FRAME_RATE):

- corloc: % of the listed frames with a ground-truth box whose box has IoU >= 0.5 with one of them
  (IoU of the boxes in the frame's pixels, at the localizer's one threshold); a frame without a box
  (judged absent, or no contour) is a miss. It is what `localize` gives a user, so it is below the
  evaluation's CorLoc, which draws a stage-1 CAM of the frame's true class (eval.cam_target), not
  of the predicted one, and picks the best threshold on the split itself;
- jitter: over consecutive frames of a shot that both have a box, the mean 1 - IoU of their boxes,
  and the mean displacement of the box centre over the frame's diagonal;
- boxes on frames listed without a ground-truth box (the object out of view), where abstaining is right.

The model runs once per frame; the cases differ only in what follows it.
"""
from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from ..config import Config
from ..data import metadata_folder
from ..data.frame_index import list_shot_frames
from ..data.layout import read_metadata
from ..video.localize import FramePredictions, Localizer, Track, TrackBuilder, abstain
from ..video.track import jitter, pairwise_iou
from .common import log, record

FRAME_RATE = 25.0  # a shot's frames have no times on disk: the common video rate
CORLOC_IOU = 0.5


def split_shots(cfg: Config, split: str) -> tuple[OrderedDict[str, list[str]], dict[str, list]]:
    """Shot id -> all its frame ids on disk (in order), and listed frame id -> ground-truth boxes."""
    meta = read_metadata(metadata_folder(cfg.dataset), splits=(split,)).splits[split]
    shots: OrderedDict[str, list[str]] = OrderedDict()
    for frame_id in meta.ids:
        shot = frame_id.rsplit("/", 1)[0]
        if shot not in shots:
            frames, problems = list_shot_frames(Path(cfg.dataset.root), shot)
            if problems:
                raise FileNotFoundError("; ".join(problems))
            shots[shot] = frames
    return shots, {frame_id: meta.boxes.get(frame_id, []) for frame_id in meta.ids}


def predict_shots(localizer: Localizer, root: Path, shots: OrderedDict[str, list[str]]) -> list[FramePredictions]:
    """Each shot's predictions without abstention, one model pass per frame."""
    found = []
    for number, frame_ids in enumerate(shots.values(), 1):
        frames = [cv2.imread(str(root / frame_id)) for frame_id in frame_ids]
        parts = [localizer(frames[i:i + localizer.cfg.video.batch_size])
                 for i in range(0, len(frames), localizer.cfg.video.batch_size)]
        found.append(FramePredictions(*(np.concatenate([getattr(part, field.name) for part in parts])
                                        for field in dataclasses.fields(FramePredictions))))
        log(f"  shot {number}/{len(shots)}: {len(frames)} frames")
    return found


def shot_track(localizer: Localizer, shot: FramePredictions, min_presence: float, smooth: bool,
               sigma_s: float | None = None) -> Track:
    """One shot's track (its frames FRAME_RATE apart, no cut inside)."""
    builder = TrackBuilder(localizer)
    builder.add(abstain(shot, min_presence))
    return builder.finish(np.arange(len(shot.found)) / FRAME_RATE, [], smooth=smooth, sigma_s=sigma_s)


def case_measures(localizer: Localizer, predictions: list[FramePredictions], shots: OrderedDict[str, list[str]],
                  truth: dict[str, list], root: Path, min_presence: float, smooth: bool,
                  sigma_s: float | None = None) -> dict:
    hits = listed = pairs = absent_listed = boxes_when_absent = 0
    shifts, changes = [], []
    for frame_ids, shot in zip(shots.values(), predictions):
        track = shot_track(localizer, shot, min_presence, smooth, sigma_s)
        height, width = cv2.imread(str(root / frame_ids[0])).shape[:2]
        moved = jitter(track.boxes, track.found, [(0, len(frame_ids))], (width, height))
        if moved["pairs"]:
            pairs += moved["pairs"]
            changes.append(moved["one_minus_iou"] * moved["pairs"])
            shifts.append(moved["centre_shift"] * moved["pairs"])
        for index, frame_id in enumerate(frame_ids):
            if frame_id not in truth:
                continue
            if not truth[frame_id]:
                absent_listed += 1
                boxes_when_absent += int(track.found[index])
                continue
            listed += 1
            gt = np.asarray(truth[frame_id], np.float64).reshape(-1, 4)
            hits += int(track.found[index] and pairwise_iou(track.boxes[index][None], gt).max() >= CORLOC_IOU)
    return {"corloc": 100.0 * hits / max(listed, 1), "one_minus_iou": sum(changes) / max(pairs, 1),
            "centre_shift": sum(shifts) / max(pairs, 1), "pairs": pairs, "frames_with_gt": listed,
            "frames_without_gt": absent_listed, "boxes_on_frames_without_gt": boxes_when_absent}


def most_jittery_shot(localizer: Localizer, predictions: list[FramePredictions], min_presence: float) -> int:
    """The shot whose own boxes change most from frame to frame (mean 1 - IoU), among shots of 8+ frames."""
    def change(shot: FramePredictions) -> float:
        track = shot_track(localizer, shot, min_presence, smooth=False)
        measured = jitter(track.boxes, track.found, [(0, len(track.found))], (1, 1))["one_minus_iou"]
        return -1.0 if measured is None else measured  # None: no two consecutive frames with a box
    return max((i for i, shot in enumerate(predictions) if len(shot.found) >= 8),
               key=lambda i: change(predictions[i]), default=0)


def plot_shot(path: Path, root: Path, frame_ids: list[str], raw: Track, smoothed: Track,
              truth: dict[str, list], tiles: int = 6) -> Path:
    """A shot's frames with their own (red) and smoothed (yellow) boxes and the ground truth (green), and the
    boxes' centre x and width over the shot."""
    from ..viz import GT_COLOUR, PRED_COLOUR, draw_boxes, new_figure, save_figure

    smoothed_colour = (0, 220, 255)  # BGR yellow
    picks = np.linspace(0, len(frame_ids) - 1, tiles).round().astype(int)
    fig = new_figure(figsize=(2.2 * tiles, 5.2))
    grid = fig.add_gridspec(2, tiles, height_ratios=[1, 1.1])
    for column, index in enumerate(picks):
        frame = cv2.imread(str(root / frame_ids[index]))
        frame = draw_boxes(frame, truth.get(frame_ids[index], []), GT_COLOUR)
        frame = draw_boxes(frame, raw.boxes[index][None] if raw.found[index] else [], PRED_COLOUR)
        frame = draw_boxes(frame, smoothed.boxes[index][None] if smoothed.found[index] else [], smoothed_colour, 2)
        ax = fig.add_subplot(grid[0, column])
        ax.imshow(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        ax.set_title(f"frame {index}", fontsize=9)
        ax.axis("off")
    for column, (name, measure) in enumerate((("centre x (px)", lambda b: (b[:, 0] + b[:, 2]) / 2),
                                              ("width (px)", lambda b: b[:, 2] - b[:, 0]))):
        ax = fig.add_subplot(grid[1, column * tiles // 2:(column + 1) * tiles // 2])
        frames = np.arange(len(frame_ids))
        for track, label, colour in ((raw, "each frame's own box", "tab:red"), (smoothed, "smoothed", "goldenrod")):
            ax.plot(frames, np.where(track.found, measure(track.boxes), np.nan), label=label, color=colour)
        listed = [(i, box) for i, frame_id in enumerate(frame_ids) for box in truth.get(frame_id, [])[:1]]
        if listed:
            ax.plot([i for i, _ in listed], measure(np.array([box for _, box in listed], np.float64)), "o",
                    color="tab:green", label="ground truth")
        ax.set_xlabel("frame")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def run_track_bench(cfg: Config, checkpoint: str | Path, split: str, plot: Path | None = None):
    """JSON records (bench/common.py's form): per min_presence (the configured one and 0), smoothed
    (value) against each frame's own box (baseline) for CorLoc and the two jitter measures."""
    started = time.perf_counter()
    configured = cfg.video.min_presence
    localizer = Localizer(checkpoint, cfg)
    localizer.min_presence = 0.0  # abstention is applied per case below
    shots, truth = split_shots(cfg, split)
    root = Path(cfg.dataset.root)
    log(f"bench track: {checkpoint} ({localizer.stage}) on {split}: {len(shots)} shots, "
        f"threshold {localizer.threshold:.2f} ({localizer.threshold_source})")
    predictions = predict_shots(localizer, root, shots)
    if plot is not None:
        shown = most_jittery_shot(localizer, predictions, configured)
        frame_ids = list(shots.values())[shown]
        plot_shot(plot, root, frame_ids, shot_track(localizer, predictions[shown], configured, smooth=False),
                  shot_track(localizer, predictions[shown], configured, smooth=True), truth)
        log(f"bench track: {plot}: shot {list(shots)[shown]}, raw and smoothed boxes")
    for min_presence in dict.fromkeys([configured, 0.0]):
        raw, viterbi_only, smoothed = (case_measures(localizer, predictions, shots, truth, root, min_presence,
                                                     smooth, sigma_s)
                                       for smooth, sigma_s in ((False, None), (True, 0.0), (True, None)))
        config = {"checkpoint": str(Path(checkpoint).resolve()), "stage": localizer.stage, "split": split,
                  "shots": len(shots), "threshold": localizer.threshold, "min_presence": min_presence,
                  "smooth_weight": cfg.video.smooth_weight, "smooth_memory_s": cfg.video.smooth_memory_s,
                  "smooth_sigma_s": cfg.video.smooth_sigma_s,
                  "frame_rate": FRAME_RATE, "raw": raw, "viterbi_only": viterbi_only, "smoothed": smoothed,
                  "seconds": round(time.perf_counter() - started, 1)}
        yield record("track", f"corloc@min_presence={min_presence:g}", smoothed["corloc"], "%", raw["corloc"],
                     "each frame's own box", True, config)
        for measure in ("one_minus_iou", "centre_shift"):
            yield record("track", f"{measure}@min_presence={min_presence:g}", smoothed[measure], "per frame step",
                         raw[measure], "each frame's own box", False, {"split": split, "min_presence": min_presence})
