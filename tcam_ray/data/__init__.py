"""Datasets in the YouTube-Objects layout: metadata, frame index, synthetic data."""
from __future__ import annotations

from pathlib import Path

from ..config import DatasetConfig
from .frame_index import FrameIndex, build_frame_index, count_work_items
from .layout import DatasetError, DatasetMetadata, read_metadata

__all__ = ["DatasetError", "DatasetMetadata", "FrameIndex", "index_dataset", "metadata_folder", "read_metadata"]


def metadata_folder(cfg: DatasetConfig) -> Path:
    return Path(cfg.metadata) if cfg.metadata else Path(cfg.root) / "metadata"


def index_dataset(cfg: DatasetConfig, progress=None, on_total=None) -> FrameIndex:
    """Read the dataset's metadata and index its frames (see frame_index.build_frame_index).

    `on_total(n)` is told the number of work items before `progress(1)` calls start.
    """
    metadata = read_metadata(metadata_folder(cfg))
    if on_total:
        on_total(count_work_items(metadata))
    return build_frame_index(cfg.root, metadata, cfg.name, cfg.probe_frames, cfg.index_threads, progress)
