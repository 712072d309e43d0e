"""Stage-2 training rows: a decoded frame with its neighbour-frame CAM buffer.

The CAM store is grouped by shot (frames in frame order, with their stored
maps); each pass turns shot rows into training rows: one random frame per
shot (the paper) or every frame, each with the stored CAMs of itself and of
its `n` neighbours in the same shot (`before`, `after` or `both`), padded at
shot edges and flagged by a validity mask. The frame and its buffer are
resized, cropped and flipped together, so the maps stay aligned with pixels.
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


def training_rows(shots: pa.Table, root: str, offsets: np.ndarray, cam_size: int, cam_dtype: str,
                  resize: int, crop: int, flip: bool, every_frame: bool, seed: int | None = None) -> dict:
    """Shot rows -> {image (B,crop,crop,3) uint8, buffer (B,T,crop,crop) uint8, valid (B,T) bool, label}."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(seed)
    images, buffers, valids, labels = [], [], [], []
    for frame_ids, cams, label in zip(shots["frame_ids"].to_pylist(), shots["cams"].to_pylist(),
                                      shots["label"].to_pylist()):
        length = len(frame_ids)
        chosen = np.arange(length) if every_frame else rng.integers(0, length, size=1)
        indices, valid = buffer_indices(length, offsets, chosen)
        maps = decode_maps(cams, cam_size, cam_dtype)  # (length, s, s) in [0, 1]
        for frame, frame_indices, frame_valid in zip(chosen, indices, valid):
            image = read_frame(Path(root) / frame_ids[frame])
            buffer = (maps[frame_indices] * 255).astype(np.uint8)
            image, buffer = joint_crop_flip(image, buffer, resize, crop, flip, rng)
            images.append(image)
            buffers.append(buffer)
            valids.append(frame_valid)
            labels.append(label)
    order = rng.permutation(len(images))
    return {IMAGE: np.stack(images)[order], BUFFER: np.stack(buffers)[order],
            VALID: np.stack(valids)[order], LABEL: np.asarray(labels, np.int64)[order]}

