"""The config schema: every key a YAML file or `--set` may name, with its default.

Each section is a dataclass; `Config` nests them. Later stages add their own
sections here, so one file shows every knob of the tool.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .loader import ConfigError


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


@dataclass
class DatasetConfig:
    """A dataset in the YouTube-Objects layout (see README, "Datasets")."""

    name: str = "synthetic"
    # Frames live at {root}/{frame_id}; frame ids come from the metadata files.
    root: str = "data/synthetic"
    # Folder with class_id.yaml and {train,val,test}/*.txt; default {root}/metadata.
    metadata: Optional[str] = None
    # Read every frame's header while indexing ("all"), or one frame per train
    # shot ("first": faster on huge datasets; sizes of the rest are assumed equal).
    probe_frames: Literal["all", "first"] = "all"
    # Threads that list shots and read frame headers while indexing.
    index_threads: int = 8

    def __post_init__(self):
        require(self.index_threads >= 1, "dataset.index_threads", "must be at least 1")


@dataclass
class SynthConfig:
    """Knobs of `tcam-ray synth` (see tcam_ray/data/synthetic.py for what each controls)."""

    classes: int = 4  # object classes (at most 12)
    videos: int = 3  # training videos per class
    val_videos: int = 1  # validation videos per class
    test_videos: int = 1  # test videos per class
    shots: int = 3  # shots per video
    frames: int = 24  # frames per shot
    size: int = 96  # frame height in pixels
    aspect: float = 4 / 3  # frame width / height
    eval_stride: int = 4  # every k-th frame of a val/test shot is listed (when an object is visible)
    second_object_prob: float = 0.25  # chance a video shows two objects of its class
    occluder_prob: float = 0.5  # chance a shot has an occluder passing in front
    leave_frame_prob: float = 0.3  # chance a shot's object path runs partly out of the frame
    distractors: int = 6  # distractor shapes per video
    jpeg_quality: int = 92
    seed: int = 0

    def __post_init__(self):
        require(1 <= self.classes <= 12, "synth.classes", f"must be between 1 and 12, got {self.classes}")
        for key in ("videos", "shots", "frames", "eval_stride"):
            require(getattr(self, key) >= 1, f"synth.{key}", "must be at least 1")
        for key in ("val_videos", "test_videos", "distractors"):
            require(getattr(self, key) >= 0, f"synth.{key}", "must be at least 0")
        require(self.size >= 32, "synth.size", f"must be at least 32 pixels, got {self.size}")
        require(0.25 <= self.aspect <= 4, "synth.aspect", f"must be between 0.25 and 4, got {self.aspect}")
        for key in ("second_object_prob", "occluder_prob", "leave_frame_prob"):
            value = getattr(self, key)
            require(0.0 <= value <= 1.0, f"synth.{key}", f"is a probability, got {value}")
        require(1 <= self.jpeg_quality <= 100, "synth.jpeg_quality", "must be between 1 and 100")


@dataclass
class RunConfig:
    """Where a verb writes its run folder: {root}/{name}."""

    root: str = "runs"
    name: Optional[str] = None  # default: {verb}-{timestamp}


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    run: RunConfig = field(default_factory=RunConfig)
