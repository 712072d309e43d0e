"""Tagged video files into the YouTube-Objects layout that tcam_ray/data/layout.py reads:

    {root}/{class}/data/{video}/shots/{shot:03d}/frame{n:04d}.jpg
    {root}/{class}/data/{video}/source.json      where the frames came from (file, fps, cuts, settings)
    {root}/metadata/class_id.yaml, {split}/image_ids.txt, class_labels.txt, image_sizes.txt

- `{class}` is the video's tag: letters, digits, `_`, `-` and `.`, starting with a
  letter or digit, at most 200 characters, and not `metadata` (in any case: that
  is the metadata folder's name). Any other tag is an error for that video,
  found before anything of it is written.
- `{video}` is the file's name without its suffix, with characters other than
  letters, digits, `_`, `-` and `.` replaced by `_`, and so are leading dots
  (`..mp4` -> `_`, `...mp4` -> `__`, `.clip.mp4` -> `_clip`): a name is never
  `.`, `..` or hidden like the staging folders below. Cut to 200 characters.
  A video of that name already in the class is an error for that file (nothing
  is overwritten: rename the file, or delete a folder left over from an
  interrupted run).
- Shots come from the scene-cut detector (scenes.py), run on every decoded
  frame; `video.fps` then keeps frames at that rate (the first frame always),
  `video.max_side` downscales large frames, `video.max_frames` stops early.
- Train videos list their shots (tag only); val/test videos list every kept
  frame with its size and no boxes (they count for top-1 accuracy, not CorLoc).
- Appending: an existing dataset's classes keep their ids, a new tag gets the
  next free id (unless `allow_new_classes` is off: then a tag that is not one of
  the dataset's classes is an "unknown tag" error for that video). Lines are
  appended to the metadata files (existing lines stay byte for byte), each file
  replaced atomically, after each video; a lock file keeps two ingests apart.
- A video is written into a hidden staging folder and renamed into place when
  complete: a failed video leaves nothing behind.

Every problem is a VideoError naming the video file (or the tags file and line);
the other videos of the call are still ingested.
"""
from __future__ import annotations

import csv
import difflib
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import yaml

from ..data.layout import (CLASS_FILE, IDS_FILE, LABELS_FILE, SIZES_FILE, SPLITS, DatasetMetadata, SplitMetadata,
                           read_metadata)
from ..io import atomic_write_text
from .reader import VideoError, VideoReader
from .scenes import CutSettings, SceneCutDetector, shot_ranges

TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
LEADING_DOTS = re.compile(r"^\.+")
METADATA_FOLDER = "metadata"
# Compared in lower case: on a case-insensitive file system `Metadata` is that same folder.
RESERVED_TAGS = {METADATA_FOLDER}
# Names are ASCII, so characters are bytes: the staging folder ".{name}.partial-{pid}" of the
# longest name stays under the usual 255-byte limit of a file name.
MAX_NAME = 200
HEADER_NAMES = ({"path", "video", "file"}, {"class", "tag", "label"}, {"split"})
SOURCE_FILE = "source.json"
LOCK_FILE = ".ingest.lock"

Progress = Callable[[int], None]


@dataclass
class IngestItem:
    """One video to ingest: its file, tag and split, and where that was said (for errors)."""

    path: Path
    tag: str
    split: str = "train"
    where: str = ""  # "tags.csv:3"; empty for the command line


@dataclass
class IngestedVideo:
    source: str
    tag: str
    split: str
    name: str
    fps: float
    kept_fps: float
    frames_read: int
    frames_kept: int
    width: int  # of the stored frames
    height: int
    cuts: list[int]  # frames (of the source) that start a new shot
    shots: list[dict]  # per shot: id, frames kept, source range [start, end)
    seconds: float = 0.0


@dataclass
class IngestSummary:
    root: Path
    done: list[IngestedVideo] = field(default_factory=list)
    failures: list[VideoError] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- tags


def tag_problem(tag: str) -> str | None:
    if not TAG_PATTERN.match(tag):
        return (f"malformed class name {tag!r}: it becomes a folder name, so use letters, digits, '_', '-' "
                "and '.', starting with a letter or digit")
    if tag.lower() in RESERVED_TAGS:
        return (f"reserved class name {tag!r}: the dataset's {METADATA_FOLDER}/ folder has that name, "
                "so use another one")
    if len(tag) > MAX_NAME:
        return f"class name too long ({len(tag)} characters): it becomes a folder name, so use at most {MAX_NAME}"
    return None


def video_name(path: Path) -> str:
    """The video's folder name (see the module docstring): never '.', '..', hidden or empty."""
    name = UNSAFE_NAME_CHARS.sub("_", path.stem)
    name = LEADING_DOTS.sub(lambda dots: "_" * len(dots.group()), name)
    return name[:MAX_NAME] or "video"


def is_header(cells: list[str]) -> bool:
    lowered = [c.strip().lower() for c in cells]
    return all(c in names for c, names in zip(lowered, HEADER_NAMES)) and len(lowered) in (2, 3)


def read_tags_file(path: str | Path, default_split: str = "train") -> tuple[list[IngestItem], list[VideoError]]:
    """Rows `video,class[,split]` (a header row of those names is allowed; `#` starts a comment
    line); video paths are relative to the file's folder. A malformed row, a malformed class
    name, an unknown split or a missing video is an error naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise VideoError(path, "tags file not found") from None
    except UnicodeDecodeError:
        raise VideoError(path, "tags file is not text (expected CSV rows 'video,class[,split]')") from None
    items, errors = [], []
    for line, cells in enumerate(csv.reader(text.splitlines()), start=1):
        if not cells or not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
            continue
        if line == 1 and is_header(cells):
            continue
        item, problem = tags_row(path, line, [c.strip() for c in cells], default_split)
        if problem:
            errors.append(VideoError(f"{path}:{line}", problem))
        else:
            items.append(item)
    if not items and not errors:
        errors.append(VideoError(path, "tags file lists no videos (expected CSV rows 'video,class[,split]')"))
    return items, errors


def tags_row(path: Path, line: int, cells: list[str], default_split: str) -> tuple[IngestItem | None, str | None]:
    if len(cells) not in (2, 3):
        return None, f"expected 'video,class' or 'video,class,split', got {len(cells)} fields: {','.join(cells)!r}"
    video, tag = cells[0], cells[1]
    split = cells[2] if len(cells) == 3 and cells[2] else default_split
    problem = tag_problem(tag)
    if problem:
        return None, problem
    if split not in SPLITS:
        return None, f"unknown split {split!r}; use one of {', '.join(SPLITS)}"
    video_path = (path.parent / video).resolve() if not Path(video).is_absolute() else Path(video)
    if not video_path.is_file():
        return None, f"video file {video_path} not found"
    return IngestItem(video_path, tag, split, f"{path}:{line}"), None


# --------------------------------------------------------------------------- the dataset being appended to


class DatasetAppender:
    """The dataset at `root` (new or existing), locked while videos are added."""

    def __init__(self, root: str | Path, allow_new_classes: bool = True):
        self.root = Path(root)
        self.metadata_dir = self.root / METADATA_FOLDER
        self.allow_new_classes = allow_new_classes
        self.lock_handle = None
        self.metadata: DatasetMetadata | None = None

    def __enter__(self) -> "DatasetAppender":
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.lock_handle = (self.metadata_dir / LOCK_FILE).open("w")
        try:
            fcntl.flock(self.lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock_handle.close()
            raise VideoError(self.metadata_dir, "another `tcam-ray ingest` is writing to this dataset") from None
        self.metadata = self.read()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.lock_handle, fcntl.LOCK_UN)
        self.lock_handle.close()

    def read(self) -> DatasetMetadata:
        if (self.metadata_dir / CLASS_FILE).exists():
            return read_metadata(self.metadata_dir)  # a broken dataset is a DatasetError: fix it first
        return DatasetMetadata(self.metadata_dir, {}, {})

    @property
    def classes(self) -> dict[str, int]:
        return dict(self.metadata.classes)

    def label_of(self, item: IngestItem) -> int:
        """The tag's class id (a new one if allowed)."""
        problem = tag_problem(item.tag)
        if problem:
            raise VideoError(item.where or item.path, problem)
        classes = self.metadata.classes
        if item.tag in classes:
            return classes[item.tag]
        if not self.allow_new_classes:
            known = sorted(classes)
            close = difflib.get_close_matches(item.tag, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise VideoError(item.where or item.path,
                             f"unknown tag {item.tag!r}: not a class of the dataset at {self.root} and new classes "
                             f"are not allowed; its classes: {', '.join(known) or 'none'}{hint}")
        return max(classes.values(), default=-1) + 1

    def free_name(self, item: IngestItem) -> str:
        name = video_name(item.path)
        prefix = f"{item.tag}/data/{name}/"
        listed = any(i.startswith(prefix) for s in self.metadata.splits.values() for i in s.ids)
        if listed or (self.root / item.tag / "data" / name).exists():
            raise VideoError(item.where or item.path,
                             f"video {prefix.rstrip('/')} already exists in {self.root}: rename the file "
                             "(or delete that folder if it is left over from an interrupted ingest)")
        return name

    def video_folder(self, tag: str, name: str) -> Path:
        return self.root / tag / "data" / name

    def add(self, video: IngestedVideo, label: int) -> None:
        """List the video's shots (train) or frames (val/test) and write the metadata."""
        new_class = video.tag not in self.metadata.classes
        if new_class:
            self.metadata.classes[video.tag] = label
            atomic_write_text(self.metadata_dir / CLASS_FILE, yaml.safe_dump(self.metadata.classes, sort_keys=False))
        split = self.metadata.splits.setdefault(video.split, SplitMetadata(video.split))
        ids = self.listed_ids(video)
        for item_id in ids:
            split.ids.append(item_id)
            split.labels[item_id] = label
            if not split.lists_shots:
                split.sizes[item_id] = (video.width, video.height)
        lines = {IDS_FILE: ids, LABELS_FILE: [f"{i},{label}" for i in ids]}
        if not split.lists_shots:
            lines[SIZES_FILE] = [f"{i},{video.width},{video.height}" for i in ids]
        for file_name, new_lines in lines.items():
            append_lines(self.metadata_dir / video.split / file_name, new_lines)

    def listed_ids(self, video: IngestedVideo) -> list[str]:
        shots = [f"{video.tag}/data/{video.name}/shots/{shot['shot']}" for shot in video.shots]
        if video.split == "train":
            return shots
        return [f"{shot_id}/frame{n:04d}.jpg" for shot_id, shot in zip(shots, video.shots)
                for n in range(1, shot["frames"] + 1)]


def append_lines(path: Path, lines: list[str]) -> None:
    """The file with `lines` added at its end (created if needed), replaced atomically."""
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + "".join(f"{line}\n" for line in lines))


# --------------------------------------------------------------------------- one video


class FrameSampler:
    """Keeps frame i when a new tick of the target rate has started (the first frame always)."""

    def __init__(self, source_fps: float, target_fps: float | None):
        self.step = target_fps / source_fps if target_fps and source_fps > target_fps else 1.0

    @property
    def keeps_all(self) -> bool:
        return self.step >= 1.0

    def keep(self, index: int) -> bool:
        if self.keeps_all or index == 0:
            return True
        return int(np.floor(index * self.step + 1e-9)) != int(np.floor((index - 1) * self.step + 1e-9))


def fit_side(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = frame.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return frame
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def write_jpeg(path: Path, frame: np.ndarray, quality: int) -> None:
    if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {path}")


def decode_into(item: IngestItem, staging: Path, video_cfg, progress: Progress) -> tuple[dict, list[int], list[int]]:
    """Write the kept frames to staging/frames/{source index}.jpg; return the video's facts,
    the source indices kept and the cuts."""
    frames_dir = staging / "frames"
    frames_dir.mkdir(parents=True)
    with VideoReader(item.path, video_cfg.max_frames) as video:
        sampler = FrameSampler(video.info.fps, video_cfg.fps)
        detector = SceneCutDetector(CutSettings.from_config(video_cfg))
        kept, size = [], None
        for index, frame in video:
            detector.add(frame)
            if sampler.keep(index):
                stored = fit_side(frame, video_cfg.max_side)
                size = (stored.shape[1], stored.shape[0])
                write_jpeg(frames_dir / f"{index:08d}.jpg", stored, video_cfg.jpeg_quality)
                kept.append(index)
            progress(1)
        facts = {"fps": video.info.fps, "frames_read": video.frames_read, "size": size,
                 "kept_fps": video.info.fps * sampler.step}
    return facts, kept, detector.cuts()


def arrange_shots(staging: Path, frames_read: int, kept: list[int], cuts: list[int]) -> list[dict]:
    """Move staging/frames/* into staging/shots/{k:03d}/frame{n:04d}.jpg; a shot none of whose
    frames were kept (shorter than the subsampling step) is skipped."""
    kept_array = np.asarray(kept)
    shots = []
    for start, end in shot_ranges(frames_read, cuts):
        inside = kept_array[(kept_array >= start) & (kept_array < end)]
        if inside.size == 0:
            continue
        shot_id = f"{len(shots) + 1:03d}"
        folder = staging / "shots" / shot_id
        folder.mkdir(parents=True)
        for n, index in enumerate(inside.tolist(), start=1):
            os.rename(staging / "frames" / f"{index:08d}.jpg", folder / f"frame{n:04d}.jpg")
        shots.append({"shot": shot_id, "frames": int(inside.size), "source_start": start, "source_end": end})
    (staging / "frames").rmdir()
    return shots


def ingest_video(item: IngestItem, folder: Path, video_cfg, progress: Progress | None = None) -> IngestedVideo:
    """Decode one video into `folder` (created complete, or not at all)."""
    started = time.perf_counter()
    staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        facts, kept, cuts = decode_into(item, staging, video_cfg, progress or (lambda n: None))
        shots = arrange_shots(staging, facts["frames_read"], kept, cuts)
        video = IngestedVideo(
            source=str(Path(item.path).resolve()), tag=item.tag, split=item.split, name=folder.name,
            fps=facts["fps"], kept_fps=round(facts["kept_fps"], 6), frames_read=facts["frames_read"],
            frames_kept=len(kept), width=facts["size"][0], height=facts["size"][1], cuts=cuts, shots=shots)
        video.seconds = round(time.perf_counter() - started, 3)
        record = {**asdict(video), "settings": asdict(video_cfg), "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(staging / SOURCE_FILE, json.dumps(record, indent=1))
        os.rename(staging, folder)
        return video
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- many videos


def remove_empty_class_folder(class_folder: Path) -> None:
    """A failed first video of a new class leaves no empty {class}/data/ behind."""
    for folder in (class_folder / "data", class_folder):
        try:
            folder.rmdir()
        except OSError:
            return


def ingest_videos(items: list[IngestItem], root: str | Path, video_cfg, allow_new_classes: bool = True,
                  progress: Progress | None = None,
                  on_video: Callable[[IngestedVideo | VideoError], None] | None = None) -> IngestSummary:
    """Ingest each item into the dataset at `root`; a failing video is recorded, the rest go on."""
    summary = IngestSummary(Path(root))
    report = on_video or (lambda outcome: None)
    with DatasetAppender(root, allow_new_classes) as dataset:
        for item in items:
            try:
                label = dataset.label_of(item)
                folder = dataset.video_folder(item.tag, dataset.free_name(item))
                folder.parent.mkdir(parents=True, exist_ok=True)
                video = ingest_video(item, folder, video_cfg, progress)
                dataset.add(video, label)
            except VideoError as err:
                if tag_problem(item.tag) is None:
                    remove_empty_class_folder(Path(root) / item.tag)
                summary.failures.append(err)
                report(err)
                continue
            summary.done.append(video)
            report(video)
        summary.classes = dataset.classes
    return summary
