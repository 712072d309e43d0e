"""Ray Data pipelines: frame index rows -> decoded, augmented uint8 frames as Arrow batches.

The only module of `tcam_ray.data` that imports Ray. Rows are small (ids and
labels); decoding happens in `map_batches` tasks close to the files, and the
training workers read their shard with `iter_torch_batches`.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import ray.data

from ..config import Config
from .buffers import neighbour_offsets, training_rows
from .frames import DECODE_CPUS, ROW, decode_batch, shots_table, split_rows


# An actor pool (CAM store, localize) is all up, each actor holding the model, before rows flow; a pool the
# cluster cannot place (or an autoscaler cannot add nodes for) ends with Ray's timeout error after this long.
ACTORS_START_S = 600


def configure_ray_data() -> None:
    """Quiet, and no per-operator CPU reservation: our pipelines are one decode step (plus the
    CAM actors), and on small machines the reservation (half the CPUs per operator) ran the
    decode tasks one at a time (seen: 900 -> 2000 frames/s on 2 CPUs without it). A decode task's
    own error (a DatasetError naming the corrupt frame) reaches the consumer as itself, not as a
    UserCodeException that keeps only its text. Actor pools wait for all their actors (ACTORS_START_S):
    otherwise the first actor up does the work while the others, on other nodes, still load the model."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.op_resource_reservation_enabled = False
    context.raise_original_map_exception = True
    context.wait_for_min_actors_s = ACTORS_START_S
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def permuted(rows: pa.Table, seed: int) -> pa.Table:
    return rows.take(np.random.default_rng(seed).permutation(rows.num_rows))


def blocks_of(rows: pa.Table, size: int) -> list[pa.Table]:
    return [rows.slice(start, size) for start in range(0, rows.num_rows, size)]


def train_dataset(index_table: pa.Table, cfg: Config) -> ray.data.Dataset:
    """Training frames; with input.sampling = one_per_shot, each pass draws one frame per shot."""
    rows = split_rows(index_table, "train").select(["frame_id", "shot_id", "label", ROW])
    if cfg.input.sampling == "one_per_shot":
        rows = shots_table(rows).select(["frame_ids", "label", ROW])
    else:
        rows = rows.select(["frame_id", "label", ROW])
    # Shuffle cheaply: rows are permuted once here into blocks of one decode batch, block
    # order changes every pass, and decode_batch permutes the rows of its batch. A full
    # random_shuffle() is an all-to-all exchange per epoch (seconds on small datasets).
    dataset = ray.data.from_arrow(blocks_of(permuted(rows, cfg.train.seed), cfg.input.decode_batch_size))
    return dataset.randomize_block_order().map_batches(
        decode_batch,
        batch_format="numpy",
        batch_size=cfg.input.decode_batch_size,
        num_cpus=DECODE_CPUS,
        fn_kwargs=dict(root=cfg.dataset.root, train=True, resize_size=cfg.input.resize_size,
                       crop_size=cfg.input.crop_size, flip=cfg.input.flip, shuffle=True),
    )


def eval_dataset(index_table: pa.Table, cfg: Config, split: str) -> ray.data.Dataset:
    """Every listed frame of a split, resized to the crop size, with its row number."""
    rows = split_rows(index_table, split).select(["frame_id", "label", ROW])
    return ray.data.from_arrow(rows).map_batches(
        decode_batch,
        batch_format="numpy",
        batch_size=cfg.input.decode_batch_size,
        num_cpus=DECODE_CPUS,
        fn_kwargs=dict(root=cfg.dataset.root, train=False, resize_size=cfg.input.resize_size,
                       crop_size=cfg.input.crop_size),
    )


def cam_dataset(rows: pa.Table, cfg: Config, input_cfg, predictor_cls, predictor_args: dict) -> ray.data.Dataset:
    """Rows (frame_id, label, row) -> decoded at the checkpoint's input size -> maps from an
    actor pool whose actors each hold the model (`predictor_cls(**predictor_args)`)."""
    decoded = ray.data.from_arrow(rows.select(["frame_id", "label", ROW])).map_batches(
        decode_batch,
        batch_format="numpy",
        batch_size=cfg.input.decode_batch_size,
        num_cpus=DECODE_CPUS,
        fn_kwargs=dict(root=cfg.dataset.root, train=False, resize_size=input_cfg.resize_size,
                       crop_size=input_cfg.crop_size),
    )
    return decoded.map_batches(
        predictor_cls,
        batch_format="numpy",
        batch_size=cfg.cam.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.cam.actors),
        num_cpus=cfg.cam.cpus_per_actor,
        num_gpus=1 if cfg.scale.use_gpu else 0,
        fn_constructor_kwargs=predictor_args,
    )


def buffer_train_dataset(shots: pa.Table, cfg: Config, cam_size: int, cam_dtype: str) -> ray.data.Dataset:
    """Stage-2 training rows (clips of frames, each with its neighbour CAM buffer, cropped and flipped
    together) from shot rows (`buffers.shots_from_store`); each pass draws new clips, crops and order."""
    frames_per_shot = max(1, int(np.mean([len(f) for f in shots["frame_ids"].to_pylist()])))
    every_frame = cfg.input.sampling == "all"
    shots_per_task = max(1, cfg.input.decode_batch_size // (frames_per_shot if every_frame else 1))
    dataset = ray.data.from_arrow(blocks_of(permuted(shots, cfg.train.seed), shots_per_task))
    return dataset.randomize_block_order().map_batches(
        training_rows,
        batch_format="pyarrow",
        batch_size=shots_per_task,
        num_cpus=DECODE_CPUS,
        fn_kwargs=dict(root=cfg.dataset.root, offsets=neighbour_offsets(cfg.tcam.n, cfg.tcam.direction),
                       cam_size=cam_size, cam_dtype=cam_dtype, resize=cfg.input.resize_size,
                       crop=cfg.input.crop_size, flip=cfg.input.flip, every_frame=every_frame,
                       clip=cfg.tcam.clip, window=cfg.tcam.clip_window),
    )
