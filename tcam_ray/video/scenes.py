"""Scene cuts (hard cuts between shots) from frame differences.

Each frame is reduced to a small grey image (SIGNATURE_WIDTH pixels wide, area
averaging, so noise and compression artefacts mostly average out); the
difference of two consecutive frames is the mean absolute difference of their
signatures, on the 0-255 scale. Frame t starts a new shot when its difference
d[t] to frame t-1 is

- at least `min_diff` (absolute: a slow scene never cuts), and
- at least `ratio` times the median of the differences of the `window` frames
  on each side of t (adaptive: fast camera motion raises the median, so only a
  jump well above the surrounding motion counts),

and it lies at least `min_shot` frames after the previous cut and before the
end (a flash or a one-frame glitch is not a shot). Gradual transitions (fades,
dissolves) spread the change over many frames and are not detected.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SIGNATURE_WIDTH = 64
MEDIAN_FLOOR = 1.0  # a median below this (a still scene) counts as this much


def frame_signature(frame_bgr: np.ndarray, width: int = SIGNATURE_WIDTH) -> np.ndarray:
    """A small float32 grey image of the frame, keeping its aspect ratio."""
    height = max(1, round(width * frame_bgr.shape[0] / frame_bgr.shape[1]))
    small = cv2.resize(frame_bgr, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)


@dataclass
class CutSettings:
    ratio: float = 3.0
    min_diff: float = 10.0
    window: int = 12
    min_shot: int = 5

    @classmethod
    def from_config(cls, video) -> "CutSettings":
        return cls(video.cut_ratio, video.cut_min_diff, video.cut_window, video.min_shot_frames)


def local_medians(diffs: np.ndarray, window: int) -> np.ndarray:
    """For each t, the median of diffs[t-window .. t+window] without diffs[t] (edges: what exists)."""
    padded = np.pad(diffs.astype(np.float64), window, constant_values=np.nan)
    views = sliding_window_view(padded, 2 * window + 1).copy()
    views[:, window] = np.nan
    with np.errstate(all="ignore"):
        medians = np.nanmedian(views, axis=1) if views.shape[1] > 1 else np.full(len(diffs), np.nan)
    return np.nan_to_num(medians, nan=0.0)


def detect_cuts(diffs: np.ndarray, settings: CutSettings) -> list[int]:
    """Frames that start a new shot, given diffs[i] = difference between frames i+1 and i."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size == 0:
        return []
    baseline = np.maximum(local_medians(diffs, settings.window), MEDIAN_FLOOR)
    candidates = np.flatnonzero((diffs >= settings.min_diff) & (diffs >= settings.ratio * baseline)) + 1
    frames = diffs.size + 1
    cuts: list[int] = []
    for cut in candidates.tolist():
        if cut - (cuts[-1] if cuts else 0) >= settings.min_shot and frames - cut >= settings.min_shot:
            cuts.append(cut)
    return cuts


def shot_ranges(frames: int, cuts: list[int]) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the shots of a video of `frames` frames."""
    bounds = [0, *cuts, frames]
    return [(start, end) for start, end in zip(bounds, bounds[1:]) if end > start]


@dataclass
class SceneCutDetector:
    """Streaming: feed every decoded frame in order, then ask for the cuts. Keeps one number
    per frame (and the previous signature), so any length of video fits."""

    settings: CutSettings = field(default_factory=CutSettings)
    diffs: list[float] = field(default_factory=list)
    previous: np.ndarray | None = None

    def add(self, frame_bgr: np.ndarray) -> None:
        signature = frame_signature(frame_bgr)
        if self.previous is not None:
            self.diffs.append(float(np.abs(signature - self.previous).mean()))
        self.previous = signature

    def cuts(self) -> list[int]:
        return detect_cuts(np.array(self.diffs), self.settings)


def find_cuts(frames, settings: CutSettings | None = None) -> list[int]:
    """Cuts of a sequence of BGR frames (see the module docstring)."""
    detector = SceneCutDetector(settings or CutSettings())
    for frame in frames:
        detector.add(frame)
    return detector.cuts()
