"""H.264 MP4 that browsers play: libx264 through PyAV, yuv420p, the index (moov) at the front
(movflags +faststart) so it starts playing before it has downloaded, and every frame at the
presentation time it is given (a variable frame rate stays variable).

yuv420p stores colour at half resolution, so its width and height must be even: a frame of
odd width or height gets one more column or row, a copy of its last one (`coded_size`); the
frame's own pixels are unchanged and at the same place.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .reader import VideoError

TIME_BASE = Fraction(1, 90000)  # MPEG's 90 kHz clock: any frame time to 11 microseconds
CRF = "20"  # x264's constant quality: visually near-lossless for heat maps and thin box lines


def coded_size(frame_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) rounded up to even numbers."""
    return frame_size[0] + frame_size[0] % 2, frame_size[1] + frame_size[1] % 2


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """The frame with its last row and/or column repeated once where its height and/or width is odd."""
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


class H264Writer:
    """BGR uint8 frames of one size, each with its time in seconds (increasing), into an MP4."""

    def __init__(self, path: Path, frame_size: tuple[int, int], fps: float):
        self.path = Path(path)
        self.size = coded_size(frame_size)
        self.last_pts = -1
        try:
            self.container = av.open(str(self.path), "w", format="mp4", options={"movflags": "+faststart"})
            self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        except (av.FFmpegError, ValueError) as err:
            raise VideoError(self.path, f"cannot open an H.264 (libx264) writer: {err}") from None
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = TIME_BASE
        self.stream.codec_context.time_base = TIME_BASE
        self.stream.options = {"crf": CRF, "preset": "veryfast"}

    def write(self, frame_bgr: np.ndarray, time_s: float) -> None:
        # Strictly increasing presentation times: a damaged file may repeat one.
        pts = max(round(time_s / TIME_BASE), self.last_pts + 1)
        self.last_pts = pts
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_to_even(frame_bgr)), format="bgr24")
        frame.pts, frame.time_base = pts, TIME_BASE
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and write the index; safe to call twice."""
        if self.container is None:
            return
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()
            self.container = None
