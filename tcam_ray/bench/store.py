"""`tcam-ray bench store`: bytes per frame of the CAM store against one float32 full-size
map per frame (what the reference code keeps), on the config's dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import Config, to_dict
from ..data import index_dataset
from ..models import build_classifier
from ..train.cams import fill_cam_store
from ..train.checkpoints import write_checkpoint
from .common import dataset_for, log, record, scratch_dir


def untrained_checkpoint(cfg: Config, classes: list[str], folder: Path) -> Path:
    """A stage-1 checkpoint of a randomly initialised classifier: the store's size does not
    depend on training (maps are min-max normalised either way)."""
    torch.manual_seed(cfg.train.seed)
    model = build_classifier(cfg.model.arch, len(classes), layer4_stride=cfg.model.layer4_stride,
                             layer3_stride=cfg.model.layer3_stride)
    meta = {"stage": "cam", "epoch": 0, "classes": classes, "arch": cfg.model.arch}
    return write_checkpoint(folder, {"model": model.state_dict()}, meta, to_dict(cfg))


def run_store_bench(cfg: Config) -> Iterator[dict]:
    with scratch_dir() as scratch:
        scratch = Path(scratch)
        cfg = dataset_for(cfg, scratch)
        index = index_dataset(cfg.dataset)
        checkpoint = untrained_checkpoint(cfg, index.info.classes, scratch / "checkpoint")
        summary = fill_cam_store(cfg, checkpoint, scratch / "cams.parquet")
        train = index.split("train")
        full_size = float(np.mean(train["width"].to_numpy() * train["height"].to_numpy()) * 4)
        log(f"store: {summary.frames} frames, {summary.bytes_per_frame:.0f} B/frame; float32 full size {full_size:.0f} B")
        yield record("store", f"CAM store, {cfg.cam.size}x{cfg.cam.size} {cfg.cam.dtype}", summary.bytes_per_frame,
                     "bytes/frame", full_size, "one float32 map at full frame size per frame", False,
                     {"frames": summary.frames, "method": cfg.cam.method, "size": cfg.cam.size, "dtype": cfg.cam.dtype,
                      "mean_frame_pixels": full_size / 4})
