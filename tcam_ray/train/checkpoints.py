"""Checkpoint folders: `state.pt` (model, optimiser, schedule, epoch, best scores), the
resolved `config.yaml` and `meta.json` (stage, epoch, metrics, dataset fingerprint, and the
size and SHA-256 of state.pt).

Written to a temporary folder, flushed to the disk and renamed into place, so a crash never
leaves a half-written checkpoint; loading checks state.pt against meta.json's size and hash
(a truncated or altered file is refused) and reads it with `weights_only=True` (a file that
carries Python objects besides tensors is refused without running them). The run folder
keeps the last `train.keep_last` epochs plus the best by val CorLoc and by val top-1.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..config import ConfigError, config_from_dict, dump_config, saved_config_from_dict, to_dict
from ..io import (UnreadableFileError, atomic_write_text, file_sha256, fsync_folder, load_tensors, save_tensors,
                  uninterrupted, writing)

STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
EPOCH_PREFIX = "epoch-"
BEST_PREFIX = "best-"
CHECKPOINT_FORMAT = "tcam-ray checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(UnreadableFileError):
    """A checkpoint folder that is missing, damaged or unsafe to load; the message names the file."""


def write_checkpoint(folder: Path, state: dict, meta: dict, config_dict: dict) -> Path:
    """Write a checkpoint folder atomically and durably (replacing one already there)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    with uninterrupted(), writing(folder, tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_tensors(state, tmp / STATE_FILE)
        stamp = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                 "state_bytes": (tmp / STATE_FILE).stat().st_size, "state_sha256": file_sha256(tmp / STATE_FILE)}
        atomic_write_text(tmp / META_FILE, json.dumps({**meta, **stamp}, indent=1), durable=True)
        atomic_write_text(tmp / CONFIG_FILE, dump_config(config_from_dict(config_dict)), durable=True)
        fsync_folder(tmp)
        replace_folder(tmp, folder)
        fsync_folder(folder.parent)
    return folder


def replace_folder(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def read_meta(folder: Path) -> dict:
    """meta.json of a tcam-ray checkpoint folder (one that records its state file's checksum)."""
    meta, path = read_meta_json(folder), Path(folder) / META_FILE
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a tcam-ray checkpoint (no \"format\": \"{CHECKPOINT_FORMAT}\"); if it is "
                              f"yours, from a tcam-ray before checkpoints carried checksums: `tcam-ray checkpoint "
                              f"convert {folder}`")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')!r}; this tcam-ray reads version "
                              f"{CHECKPOINT_VERSION}")
    return meta


def read_meta_json(folder: Path) -> dict:
    path = Path(folder) / META_FILE
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found" if not Path(folder).exists()
                              else f"{folder} is not a tcam-ray checkpoint (a file, not a checkpoint folder)")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a tcam-ray checkpoint (no {META_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: damaged, not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: damaged, not a JSON object")
    return meta


def verify_state_file(folder: Path, meta: dict | None = None) -> Path:
    """state.pt, checked against the size and SHA-256 that meta.json recorded when it was written."""
    meta = meta if meta is not None else read_meta(folder)
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} is not a tcam-ray checkpoint (no {STATE_FILE})")
    size, expected = path.stat().st_size, meta.get("state_bytes")
    if size == 0:
        raise CheckpointError(f"{path}: empty (0 bytes): cut off while it was written or copied")
    if expected is not None and size < expected:
        raise CheckpointError(f"{path}: truncated ({size} of {expected} bytes)")
    if file_sha256(path) != meta.get("state_sha256"):
        raise CheckpointError(f"{path}: checksum mismatch: its SHA-256 is not the one {META_FILE} recorded "
                              "(altered or damaged after it was written)")
    return path


def load_state(folder: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state file's tensors and plain values, after its size and checksum are checked. Never unpickles
    anything else: a checkpoint from a stranger can not run code here."""
    return load_tensors(verify_state_file(folder), device, if_yours=f"`tcam-ray checkpoint convert {folder} --trust`")


STAMP_KEYS = ("format", "version", "state_bytes", "state_sha256")


def convert_checkpoint(folder: Path, trust: bool = False) -> dict:
    """Rewrite a checkpoint of an older tcam-ray in place, as this one writes them: meta.json with the state
    file's size and checksum, and (with `trust`: the user's own files only, it unpickles them) a state file
    of tensors and plain values. Its meta as now written."""
    folder = Path(folder)
    meta, config = read_meta_json(folder), checkpoint_config(folder)
    path = folder / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} is not a tcam-ray checkpoint (no {STATE_FILE})")
    try:
        state = load_tensors(path, if_yours=f"`tcam-ray checkpoint convert {folder} --trust`")
    except UnreadableFileError:
        if not trust:
            raise
        state = plain_values(torch.load(path, map_location="cpu", weights_only=False), path)
    write_checkpoint(folder, state, {k: v for k, v in meta.items() if k not in STAMP_KEYS}, to_dict(config))
    return read_meta(folder)


def plain_values(value: Any, source: Path) -> Any:
    """`value` as what `torch.load(weights_only=True)` reads: tensors, numbers, strings, lists, dicts."""
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {key if isinstance(key, (int, str)) else str(key): plain_values(item, source)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain_values(item, source) for item in value]
        return items if isinstance(value, list) else tuple(items)
    raise CheckpointError(f"{source}: holds a {type(value).__module__}.{type(value).__qualname__}, which has no "
                          "plain form (tensors, numbers, strings, lists, dicts); convert it yourself")


def checkpoint_config(folder: Path):
    """The typed config a checkpoint was trained with (keys retired since it was written are dropped)."""
    import yaml

    path = Path(folder) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a tcam-ray checkpoint (no {CONFIG_FILE})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: damaged, not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: damaged, not a config mapping")
    try:
        return saved_config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def check_checkpoint(folder: Path) -> dict:
    """Meta of a checkpoint whose three files are whole (config parsed, state size and hash checked)."""
    meta = read_meta(folder)
    checkpoint_config(folder)
    verify_state_file(folder, meta)
    return meta


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from, and the newer ones passed over because they are damaged."""

    folder: Path | None
    epoch: int
    skipped: list[str]  # "folder: what is wrong"


class CheckpointKeeper:
    """The run folder's checkpoints/: epoch-NNNN (last N), best-corloc, best-top1, ..."""

    def __init__(self, run_dir: Path, keep_last: int):
        self.folder = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def save_epoch(self, epoch: int, state: dict, meta: dict, config_dict: dict) -> Path:
        path = write_checkpoint(self.folder / f"{EPOCH_PREFIX}{epoch:04d}", state, meta, config_dict)
        for stale in self.epoch_folders()[: -self.keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
        return path

    def save_best(self, name: str, source: Path) -> Path:
        target = self.best_folder(name)
        tmp = self.folder / f".{target.name}.tmp-{os.getpid()}"
        with uninterrupted(), writing(target, tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp)
            replace_folder(tmp, target)
        return target

    def best_folder(self, name: str) -> Path:
        return self.folder / f"{BEST_PREFIX}{name.replace('_', '-')}"

    def epoch_folders(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.startswith(EPOCH_PREFIX) and (p / META_FILE).exists())

    def latest(self) -> Path | None:
        folders = self.epoch_folders()
        return folders[-1] if folders else None

    def resume_point(self) -> ResumePoint:
        """The newest whole checkpoint, epoch or best (a best is a whole checkpoint of an earlier epoch:
        with keep_last=1 it is the only one older than the last); damaged ones are passed over."""
        candidates = [(recorded_epoch(folder) or -1, folder) for folder in [*self.epoch_folders(), *self.best_folders()]]
        skipped = []
        for epoch, folder in sorted(candidates, key=lambda c: (c[0], c[1].name.startswith(EPOCH_PREFIX)),
                                    reverse=True):
            try:
                meta = check_checkpoint(folder)
            except (UnreadableFileError, ConfigError) as err:
                skipped.append(str(err))
                continue
            return ResumePoint(folder, int(meta["epoch"]), skipped)
        return ResumePoint(None, 0, skipped)

    def best_folders(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.startswith(BEST_PREFIX))

    def remove_leftovers(self) -> list[Path]:
        """Temporary folders of writes a crash cut short (.epoch-0003.tmp-PID, .best-corloc.old-PID)."""
        if not self.folder.exists():
            return []
        leftovers = [p for p in self.folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or
                                                                                   ".old-" in p.name)]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return leftovers

    def restore_best(self, best_epochs: dict[str, int]) -> list[str]:
        """Copy again each best-* whose epoch is not the one the state recorded (a crash cut the copy
        short); the names restored."""
        restored = []
        for name, epoch in best_epochs.items():
            target = self.best_folder(name)
            source = self.folder / f"{EPOCH_PREFIX}{epoch:04d}"
            if recorded_epoch(target) != epoch and (source / META_FILE).exists():
                self.save_best(name, source)
                restored.append(target.name)
        return restored


def recorded_epoch(folder: Path) -> int | None:
    """The epoch a checkpoint folder's meta.json says, or None where it cannot be read."""
    try:
        return int(json.loads((folder / META_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
