"""Video files in: find them, probe them, decode them frame by frame with OpenCV (FFmpeg).

Every problem is a `VideoError` naming the file, with what is wrong in words a
person can act on:

- not found, a folder, an empty (0-byte) file;
- not a video: the first bytes match no video container (MP4/MOV, Matroska/WebM,
  AVI, MPEG-TS/PS, FLV, Ogg, ASF);
- a container FFmpeg cannot open: for MP4/MOV the top-level boxes are read to say
  whether the index (`moov`) is missing (cut short, or never finished writing) or
  the media data is empty (no frames);
- no frames, or none decodable;
- truncated or damaged: decoding stopped before the frame count the container
  announces. Some containers (Matroska, WebM) only estimate that count from their
  duration, so a shortfall of up to 1% (at least one frame) is tolerated.

FFmpeg's own log lines are silenced (OPENCV_FFMPEG_LOGLEVEL, unless already set):
these errors say the same, once, with the file name.
"""
from __future__ import annotations

import glob
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg is first used

import cv2  # noqa: E402  (after the log level)
import numpy as np  # noqa: E402

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")
GLOB_CHARS = set("*?[")
FALLBACK_FPS = 25.0  # for a video whose container gives neither frame times nor a frame rate
TRUNCATION_TOLERANCE = 0.01  # announced frame counts of some containers are estimates
MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}


class VideoError(Exception):
    """A video file that cannot be used, and why; str() names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    frames: int  # as the container announces it (0 when unknown)
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


# --------------------------------------------------------------------------- finding videos


def is_video_name(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[VideoError]]:
    """Files as given (a missing one is kept: reading it reports it), the video files directly
    inside folders, and the matches of glob patterns (`**` recurses); in order, without repeats.
    A folder without videos or a pattern matching nothing is an error."""
    paths: list[Path] = []
    errors: list[VideoError] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_video_name(p))
            if not found:
                errors.append(VideoError(path, f"folder holds no video files ({', '.join(VIDEO_SUFFIXES)})"))
            paths += found
        elif not path.exists() and GLOB_CHARS & set(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                errors.append(VideoError(item, "pattern matches no files"))
            paths += found
        else:
            paths.append(path)
    unique = list(dict.fromkeys(p.resolve() if p.exists() else p for p in paths))
    return unique, errors


# --------------------------------------------------------------------------- explaining failures


def container_kind(head: bytes) -> str | None:
    """The container the first bytes of a file belong to, or None."""
    if len(head) >= 8 and head[4:8] in MP4_BOXES:
        return "MP4/MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "AVI"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "MPEG-PS"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "MPEG-TS"
    if head.startswith(b"FLV"):
        return "FLV"
    if head.startswith(b"OggS"):
        return "Ogg"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "ASF/WMV"
    return None


def mp4_top_boxes(path: Path) -> dict[bytes, int]:
    """Top-level MP4 box types and their total payload bytes; stops at the first box that runs
    past the end of the file (a cut-short file), which then counts as absent."""
    boxes: dict[bytes, int] = {}
    size_total = path.stat().st_size
    with path.open("rb") as handle:
        offset = 0
        while offset + 8 <= size_total:
            handle.seek(offset)
            size, kind = struct.unpack(">I4s", handle.read(8))
            header = 8
            if size == 1:
                size = struct.unpack(">Q", handle.read(8))[0]
                header = 16
            elif size == 0:
                size = size_total - offset
            if size < header or offset + size > size_total:
                break
            boxes[kind] = boxes.get(kind, 0) + size - header
            offset += size
    return boxes


def why_unopenable(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(512)
    kind = container_kind(head)
    if kind is None:
        return f"not a video file: its content matches no video container (starts with {head[:12]!r})"
    size = path.stat().st_size
    if kind == "MP4/MOV":
        boxes = mp4_top_boxes(path)
        if b"moov" not in boxes:
            return (f"truncated or unfinished MP4/MOV ({size} bytes): its index (the 'moov' box) is missing, "
                    "so no frame can be found; was the file cut short or still being written?")
        if boxes.get(b"mdat", 0) == 0:
            return f"MP4/MOV without frames ({size} bytes): its media data ('mdat') is empty"
    return f"damaged {kind} file ({size} bytes): FFmpeg (via OpenCV) cannot open it"


# --------------------------------------------------------------------------- reading


@contextmanager
def opencv_errors_only():
    """OpenCV warns on every file it cannot open; the VideoError says it better."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(path, "file not found")
    if path.is_dir():
        raise VideoError(path, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes): not a video")


def open_capture(path: str | Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    path = Path(path)
    check_file(path)
    with opencv_errors_only():
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise VideoError(path, why_unopenable(path))
    frames = max(0, int(round(capture.get(cv2.CAP_PROP_FRAME_COUNT))))
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    info = VideoInfo(str(path), frames, fps if np.isfinite(fps) and fps > 0 else 0.0,
                     int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return capture, info


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate and announced frame count, from the container (no frame decoded)."""
    capture, info = open_capture(path)
    capture.release()
    if info.width <= 0 or info.height <= 0:
        raise VideoError(path, "no video stream (no frame size)")
    return info


def count_frames(paths: list[Path], max_frames: int | None = None) -> int:
    """Frames that reading all these videos should give, from their containers (for progress
    bars); a file that cannot be opened counts 0 (reading it fails at once)."""
    total = 0
    for path in paths:
        try:
            frames = probe(path).frames
        except VideoError:
            continue
        total += min(frames, max_frames) if max_frames else frames
    return total


class VideoReader:
    """Frames of a video in order, as BGR uint8 (H, W, 3), checked for truncation at the end.

        with VideoReader(path, max_frames=None) as video:
            for index, frame in video: ...

    Raises VideoError naming the file: see the module's docstring. With `max_frames`,
    reading stops after that many frames (no truncation check past them).
    """

    def __init__(self, path: str | Path, max_frames: int | None = None):
        self.path = Path(path)
        self.max_frames = max_frames
        self.capture, self.info = open_capture(self.path)
        self.frames_read = 0
        self.frame_size: tuple[int, int] | None = None  # (width, height) of the decoded frames
        self.times_ms: list[float] = []  # each frame's presentation time from the stream's start (FFmpeg's pts)

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.capture.release()

    @property
    def expected_frames(self) -> int:
        """Frames this reader should deliver: the announced count, capped by max_frames."""
        if self.max_frames is None:
            return self.info.frames
        return min(self.info.frames, self.max_frames) if self.info.frames else self.max_frames

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        while self.max_frames is None or self.frames_read < self.max_frames:
            ok, frame = self.capture.read()
            if not ok or frame is None:
                break
            self.check_frame(frame)
            self.times_ms.append(float(self.capture.get(cv2.CAP_PROP_POS_MSEC)))
            yield self.frames_read, frame
            self.frames_read += 1
        self.check_complete()

    def batches(self, size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        """(index of the first frame, up to `size` frames) in order."""
        batch: list[np.ndarray] = []
        for index, frame in self:
            batch.append(frame)
            if len(batch) == size:
                yield index - size + 1, batch
                batch = []
        if batch:
            yield self.frames_read - len(batch), batch

    def frame_times(self) -> tuple[np.ndarray, str]:
        """(times in seconds of the frames read so far, where they came from): the container's
        presentation times, or index / frame rate where the container gives none that increase."""
        times = np.array(self.times_ms) / 1000
        if len(times) < 2 or np.all(np.diff(times) > 0):
            return times, "container"
        fps = self.info.fps or FALLBACK_FPS
        return np.arange(len(times)) / fps, f"frame index / {fps:g} fps (the container gives no increasing times)"

    def check_frame(self, frame: np.ndarray) -> None:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise VideoError(self.path, f"frame {self.frames_read} decoded as {frame.dtype} {frame.shape}, "
                                        "expected 8-bit colour")
        if self.frame_size is None:
            self.frame_size = (frame.shape[1], frame.shape[0])
        elif (frame.shape[1], frame.shape[0]) != self.frame_size:
            raise VideoError(self.path, f"frame size changes from {self.frame_size[0]}x{self.frame_size[1]} to "
                                        f"{frame.shape[1]}x{frame.shape[0]} at frame {self.frames_read}")

    def check_complete(self) -> None:
        read, expected = self.frames_read, self.expected_frames
        if read == 0:
            if self.info.frames == 0:
                raise VideoError(self.path, "holds no frames")
            raise VideoError(self.path, f"no decodable frame, although the container announces {self.info.frames}: "
                                        "damaged video data or an unsupported codec")
        tolerance = max(1, int(TRUNCATION_TOLERANCE * expected))
        if read < expected - tolerance:
            raise VideoError(self.path, f"truncated or damaged: decoding stopped after {read} of the {expected} "
                                        "frames the container announces")
