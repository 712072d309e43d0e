"""Frame decoding and augmentation, shared by the Ray Data pipeline and the in-process path.

Batches are dicts of NumPy arrays, as Ray Data's `map_batches(batch_format="numpy")`
hands them over. Frames leave here as small uint8 RGB arrays (cheap to move);
normalisation to float happens on the training worker's device (tensors.normalise).
This module does not import torch: Ray Data's decode tasks run it in worker
processes that Ray starts when it needs more (and, on clusters not set up as in
clusters/, after each idle second), and torch's import costs each about 1.5 s.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .layout import DatasetError

# Columns that leave the decode step: all numeric, so iter_torch_batches takes them.
IMAGE, LABEL, ROW = "image", "label", "row"

# Per decode task (each decodes with one OpenCV thread). Two tasks share a CPU: Ray Data's executor
# looks for finished tasks every 100 ms at most, and with one task per CPU that CPU idles until it
# does (bench data, 2 CPUs: 0.89x -> about 0.94x of a DataLoader with as many processes).
DECODE_CPUS = 0.5
DECODE_RESERVE_CPUS = 2 * DECODE_CPUS  # kept free for decoding beside training workers and trials


def read_frame(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); a missing or undecodable file is a DatasetError naming it."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError([f"{path}: frame file not found"]) from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DatasetError([f"{path}: cannot decode frame (corrupt or not an image)"])
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def random_crop_flip(image: np.ndarray, crop: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    out = image[top:top + crop, left:left + crop]
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def decode_batch(batch: dict[str, np.ndarray], root: str, train: bool, resize_size: int, crop_size: int,
                 flip: bool = True, seed: int | None = None, shuffle: bool = False) -> dict[str, np.ndarray]:
    """frame ids -> {image: (B, crop, crop, 3) uint8, label, row}.

    Training frames are resized to resize_size, randomly cropped and flipped;
    eval frames are resized to crop_size. A row with `frame_ids` (a shot's
    frames) stands for one frame drawn at random from that shot. With
    `shuffle`, the batch's rows come out in a random order.
    """
    cv2.setNumThreads(1)  # parallelism comes from concurrent tasks; nested thread pools oversubscribe
    rng = np.random.default_rng(seed)
    if shuffle:
        order = rng.permutation(len(batch["label"]))
        batch = {name: [values[i] for i in order] for name, values in batch.items()}
    frame_ids = batch["frame_id"] if "frame_id" in batch else [ids[rng.integers(len(ids))] for ids in batch["frame_ids"]]
    images = np.empty((len(frame_ids), crop_size, crop_size, 3), np.uint8)
    for i, frame_id in enumerate(frame_ids):
        images[i] = decode_frame(Path(root) / frame_id, train, resize_size, crop_size, flip, rng)
    return {IMAGE: images, LABEL: np.array(batch["label"], np.int64), ROW: np.array(batch["row"], np.int64)}


def decode_frame(path: Path, train: bool, resize_size: int, crop_size: int, flip: bool,
                 rng: np.random.Generator) -> np.ndarray:
    """One frame as decode_batch makes it: (crop, crop, 3) uint8, a view when cropped."""
    size = resize_size if train else crop_size
    image = cv2.resize(read_frame(path), (size, size), interpolation=cv2.INTER_LINEAR)
    return random_crop_flip(image, crop_size, flip, rng) if train else image


def with_row_numbers(table: pa.Table) -> pa.Table:
    """The table with a `row` column: each frame's position in it (to find boxes again)."""
    return table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))


def split_rows(index_table: pa.Table, split: str) -> pa.Table:
    """Rows of one split, numbered by their position in that split's table."""
    rows = index_table.filter(pc.equal(index_table["split"], split))
    if rows.num_rows == 0:
        raise ValueError(f"the frame index has no {split!r} frames")
    return with_row_numbers(rows)


def shots_table(train_rows: pa.Table) -> pa.Table:
    """One row per shot: its frame ids (in order), label and first row number."""
    grouped = train_rows.group_by("shot_id", use_threads=False).aggregate(
        [("frame_id", "list"), ("label", "min"), (ROW, "min")])
    return pa.table({"shot_id": grouped["shot_id"], "frame_ids": grouped["frame_id_list"],
                     "label": grouped["label_min"], ROW: grouped[f"{ROW}_min"]})
