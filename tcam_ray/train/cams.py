"""Fill the CAM store: the stage-1 maps of every training frame, computed on Ray Data actors.

Each actor loads the checkpoint once and maps decoded frames to CAMs in
batches (plain CAM, GradCAM++ or LayerCAM: cam.method); the driver streams the
results into the Parquet store with the dataset's fingerprint and the
checkpoint's id.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data import FrameIndex, index_dataset
from ..data.cam_store import CamStoreWriter, StoreInfo, StoreSummary, checkpoint_id
from ..data.frames import IMAGE, LABEL, ROW, split_rows
from ..data.tensors import normalise
from ..methods.cam import compute_cams
from .checkpoints import STATE_FILE
from .evaluate import check_same_classes, load_classifier


class CamPredictor:
    """Ray Data actor: decoded uint8 frames -> uint8-ready float maps of cam.size."""

    def __init__(self, checkpoint: str, method: str, size: int, target: str, use_gpu: bool):
        torch.set_num_threads(1)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model, _, trained = load_classifier(Path(checkpoint), self.device)
        self.mean, self.std = trained.input.mean, trained.input.std
        self.method, self.size, self.target = method, size, target

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = normalise(torch.from_numpy(np.require(batch[IMAGE], requirements="W")).to(self.device),
                           self.mean, self.std)
        labels = torch.tensor(batch[LABEL], device=self.device)
        classes = labels if self.target == "true" else None
        maps = compute_cams(self.model, images, classes, self.method, output_size=self.size)
        return {ROW: batch[ROW], "cam": maps.cpu().numpy()}


def store_info(cfg: Config, index: FrameIndex, checkpoint: Path) -> StoreInfo:
    return StoreInfo(dataset=index.info.dataset, dataset_fingerprint=index.info.fingerprint,
                     classes=index.info.classes, checkpoint=str(checkpoint.resolve()),
                     checkpoint_id=checkpoint_id(checkpoint / STATE_FILE), method=cfg.cam.method,
                     size=cfg.cam.size, dtype=cfg.cam.dtype)


def fill_cam_store(cfg: Config, checkpoint: str | Path, out: str | Path, progress=None) -> StoreSummary:
    """Compute the CAMs of every training frame of cfg.dataset and write the store at `out`."""
    from ..data.pipeline import cam_dataset, configure_ray_data
    from .trainer import ray_session

    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    _, meta, trained = load_classifier(checkpoint, torch.device("cpu"))
    index = index_dataset(cfg.dataset)
    check_same_classes(meta, index, checkpoint)
    train = split_rows(index.table, "train")
    writer = CamStoreWriter(out, store_info(cfg, index, checkpoint))
    with ray_session(cfg.scale):
        configure_ray_data()
        predictor_args = dict(checkpoint=str(checkpoint), method=cfg.cam.method, size=cfg.cam.size,
                              target=cfg.eval.cam_target, use_gpu=cfg.scale.use_gpu)
        dataset = cam_dataset(train, cfg, trained.input, CamPredictor, predictor_args)
        for batch in dataset.iter_batches(batch_size=cfg.cam.batch_size, batch_format="numpy"):
            rows = train.take(batch[ROW])
            writer.write(rows["frame_id"], rows["shot_id"], rows["frame_idx"], rows["label"], batch["cam"])
            if progress:
                progress(len(batch[ROW]))
    path = writer.close()
    return StoreSummary(path, writer.rows, path.stat().st_size / max(1, writer.rows), time.perf_counter() - started)
