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
from ..io import UnreadableFileError, atomic_write_text, load_tensors

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


class CheckpointError(UnreadableFileError):
    """A checkpoint folder that is missing, damaged or unsafe to load; the message names the file."""


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a tcam-ray checkpoint (no {META_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: damaged, not JSON ({err})") from None


def load_state(folder: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state file's tensors and plain values. Never unpickles anything else: a checkpoint from a stranger
    can not run code here."""
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} is not a tcam-ray checkpoint (no {STATE_FILE})")
    return load_tensors(path, device)


def checkpoint_config(folder: Path):
    """The typed config a checkpoint was trained with (keys retired since it was written are dropped)."""
    import yaml

    path = Path(folder) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a tcam-ray checkpoint (no {CONFIG_FILE})") from None
    except yaml.YAMLError as err:
        raise CheckpointError(f"{path}: damaged, not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: damaged, not a config mapping")
    try:
        return saved_config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


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
