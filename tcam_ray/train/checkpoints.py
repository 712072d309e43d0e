"""Checkpoint folders: `state.pt` (model, optimiser, schedule, epoch, best scores), the
resolved `config.yaml` and `meta.json` (stage, epoch, metrics, dataset fingerprint).

Written to a temporary folder and renamed into place, so a crash never leaves a
half-written checkpoint. The run folder keeps the last `train.keep_last`
epochs plus the best by val CorLoc and the best by val top-1 accuracy.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, config_from_dict, dump_config, saved_config_from_dict
from ..io import atomic_write_text

STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
EPOCH_PREFIX = "epoch-"


def write_checkpoint(folder: Path, state: dict, meta: dict, config_dict: dict) -> Path:
    """Write a checkpoint folder atomically (replacing one already there)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / STATE_FILE)
    atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1))
    atomic_write_text(tmp / CONFIG_FILE, dump_config(config_from_dict(config_dict)))
    replace_folder(tmp, folder)
    return folder


def replace_folder(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} is not a tcam-ray checkpoint (no {META_FILE})") from None


def load_state(folder: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a tcam-ray checkpoint (no {STATE_FILE})")
    return torch.load(path, map_location=device, weights_only=False)


def checkpoint_config(folder: Path):
    """The typed config a checkpoint was trained with (keys retired since it was written are dropped)."""
    import yaml

    data = yaml.safe_load((Path(folder) / CONFIG_FILE).read_text())
    try:
        return saved_config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{folder / CONFIG_FILE}: {err}") from None


class CheckpointKeeper:
    """The run folder's checkpoints/: epoch-NNNN (last N), best-corloc, best-top1."""

    def __init__(self, run_dir: Path, keep_last: int):
        self.folder = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def save_epoch(self, epoch: int, state: dict, meta: dict, config_dict: dict) -> Path:
        path = write_checkpoint(self.folder / f"{EPOCH_PREFIX}{epoch:04d}", state, meta, config_dict)
        for stale in self.epoch_folders()[: -self.keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
        return path

    def save_best(self, name: str, source: Path) -> Path:
        tmp = self.folder / f".best-{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        target = self.folder / f"best-{name}"
        replace_folder(tmp, target)
        return target

    def epoch_folders(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.startswith(EPOCH_PREFIX) and (p / META_FILE).exists())

    def latest(self) -> Path | None:
        folders = self.epoch_folders()
        return folders[-1] if folders else None
