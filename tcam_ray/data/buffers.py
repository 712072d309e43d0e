"""Stage-2 training rows: clips of decoded frames, each frame with its neighbour-frame CAM buffer.

The CAM store is grouped by shot (frames in frame order, with their stored
maps); each pass turns shot rows into training rows. A row is a clip of
`clip` consecutive frames of one shot (TCAM: 1 frame; CoLo-CAM: 2), drawn
from the central `window` fraction of the shot: one random clip per shot (the
papers) or every clip. Each frame carries the stored CAMs of itself and of
its `n` neighbours in the same shot (`before`, `after` or `both`), padded at
shot edges and flagged by a validity mask. A frame and its buffer are
resized, cropped and flipped together, so the maps stay aligned with pixels;
each frame of a clip gets its own crop and flip (as CoLo-CAM's loader). A
clip travels as one row, so shuffling and batching never split it.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from .cam_store import CamStore, decode_maps
from .frames import IMAGE, LABEL, read_frame

BUFFER, VALID = "buffer", "valid"


def neighbour_offsets(n: int, direction: str) -> np.ndarray:
    """Offsets of the buffer's entries from the frame: the frame itself first."""
    before, after = list(range(-1, -n - 1, -1)), list(range(1, n + 1))
    chosen = {"before": before, "after": after, "both": before + after}[direction]
    return np.array([0, *chosen], dtype=np.int64)


def shots_from_store(store: CamStore) -> pa.Table:
    """One row per shot: label, frame ids and stored maps (binary), in frame order."""
    table = store.table.sort_by([("shot_id", "ascending"), ("frame_idx", "ascending")])
    grouped = table.group_by("shot_id", use_threads=False).aggregate(
        [("frame_id", "list"), ("cam", "list"), ("label", "min")])
    # group_by keeps each group's rows in table order, so the lists are in frame order
    return pa.table({"shot_id": grouped["shot_id"], "frame_ids": grouped["frame_id_list"],
                     "cams": grouped["cam_list"], "label": grouped["label_min"]})


def buffer_indices(length: int, offsets: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(len(frames), T) indices into a shot of `length` frames, clipped, and their validity."""
    wanted = frames[:, None] + offsets[None, :]
    valid = (wanted >= 0) & (wanted < length)
    return np.clip(wanted, 0, length - 1), valid


def joint_crop_flip(image: np.ndarray, maps: np.ndarray, resize: int, crop: int, flip: bool,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Resize a frame (H,W,3) and its maps (T,h,w) to resize x resize, then one random crop
    (and flip) for both; maps come back as uint8 (T, crop, crop)."""
    image = cv2.resize(image, (resize, resize), interpolation=cv2.INTER_LINEAR)
    stacked = cv2.resize(np.ascontiguousarray(maps.transpose(1, 2, 0)), (resize, resize),
                         interpolation=cv2.INTER_LINEAR).reshape(resize, resize, -1)
    top, left = int(rng.integers(0, resize - crop + 1)), int(rng.integers(0, resize - crop + 1))
    image, stacked = image[top:top + crop, left:left + crop], stacked[top:top + crop, left:left + crop]
    if flip and rng.random() < 0.5:
        image, stacked = image[:, ::-1], stacked[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(stacked.transpose(2, 0, 1))


def window_frames(length: int, window: float) -> np.ndarray:
    """The frames of a shot of `length` that clips are drawn from: with window < 1, the central ones
    (CoLo-CAM's loader: p = int(window * length) frames around the middle; of 2 frames both, of 3 the middle)."""
    if window >= 1.0 or length <= 2:
        return np.arange(length)
    if length == 3:
        return np.array([1])
    centre, half = length // 2, max(max(int(window * length), 1) // 2, 1)
    return np.arange(max(centre - half, 0), min(centre + half + 1, length))


def clip_frames(length: int, clip: int, window: float, every: bool, rng: np.random.Generator) -> np.ndarray:
    """(C, clip) frame indices, in time order, of one random clip (or of every clip) of a shot of `length`:
    consecutive frames inside its window. A window of fewer than `clip` frames repeats its first frame."""
    allowed = window_frames(length, window)
    ends = np.arange(min(clip, len(allowed)) - 1, len(allowed))
    if not every:
        ends = ends[rng.integers(0, len(ends), size=1)]
    return allowed[np.maximum(ends[:, None] + np.arange(1 - clip, 1)[None], 0)]


def clips_per_pass(lengths: list[int], clip: int, window: float, every: bool) -> int:
    """Training rows one pass makes from shots of these lengths."""
    if not every:
        return len(lengths)
    return sum(max(len(window_frames(length, window)) - clip + 1, 1) for length in lengths)


def training_rows(shots: pa.Table, root: str, offsets: np.ndarray, cam_size: int, cam_dtype: str,
                  resize: int, crop: int, flip: bool, every_frame: bool, clip: int = 1, window: float = 1.0,
                  seed: int | None = None) -> dict:
    """Shot rows -> clip rows {image (B, T, crop, crop, 3) uint8, buffer (B, T, K, crop, crop) uint8,
    valid (B, T, K) bool, label (B,)}, with T = clip and K = len(offsets)."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(seed)
    images, buffers, valids, labels = [], [], [], []
    for frame_ids, cams, label in zip(shots["frame_ids"].to_pylist(), shots["cams"].to_pylist(),
                                      shots["label"].to_pylist()):
        length = len(frame_ids)
        maps = decode_maps(cams, cam_size, cam_dtype)  # (length, s, s) in [0, 1]
        for frames in clip_frames(length, clip, window, every_frame, rng):
            indices, valid = buffer_indices(length, offsets, frames)
            clip_images, clip_buffers = [], []
            for frame, frame_indices in zip(frames, indices):
                image = read_frame(Path(root) / frame_ids[frame])
                buffer = (maps[frame_indices] * 255).astype(np.uint8)
                image, buffer = joint_crop_flip(image, buffer, resize, crop, flip, rng)
                clip_images.append(image)
                clip_buffers.append(buffer)
            images.append(np.stack(clip_images))
            buffers.append(np.stack(clip_buffers))
            valids.append(valid)
            labels.append(label)
    order = rng.permutation(len(images))
    return {IMAGE: np.stack(images)[order], BUFFER: np.stack(buffers)[order],
            VALID: np.stack(valids)[order], LABEL: np.asarray(labels, np.int64)[order]}
