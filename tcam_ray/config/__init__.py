"""Typed configs: `load(path, overrides)` gives a `Config`; `to_dict`/`from_dict` cross processes."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

from .loader import ConfigError, drop_retired, dump_config, from_dict, to_dict
from .loader import load_config as _load_config
from .schema import (
    RETIRED_KEYS, CamConfig, Config, DatasetConfig, EvalConfig, InputConfig, ModelConfig, RunConfig, ScaleConfig,
    SynthConfig, TcamConfig, TrainConfig,
)

__all__ = [
    "CamConfig", "Config", "ConfigError", "DatasetConfig", "EvalConfig", "InputConfig", "ModelConfig", "RunConfig",
    "ScaleConfig", "SynthConfig", "TcamConfig", "TrainConfig",
    "RETIRED_KEYS", "config_from_dict", "dump_config", "load", "resolve_paths", "saved_config_from_dict", "to_dict",
]


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- YAML file (and its chain of `base:` files) <- `--set section.key=value` overrides."""
    return _load_config(Config, path, overrides, retired=RETIRED_KEYS)


def config_from_dict(data: dict) -> Config:
    """The typed config from its plain dict (as received by a Ray worker)."""
    return from_dict(Config, data)


def saved_config_from_dict(data: dict) -> Config:
    """The typed config of a config saved by tcam-ray (a checkpoint's config.yaml), possibly
    by an older version: keys retired since (RETIRED_KEYS) are dropped, any other unknown
    key is still an error."""
    return from_dict(Config, drop_retired(data, RETIRED_KEYS))


def resolve_paths(cfg: Config, cwd: str | Path | None = None) -> Config:
    """The config with its local paths made absolute (Ray workers run in other folders)
    and the dataset's metadata folder filled in ({root}/metadata by default)."""
    cwd = Path(cwd or Path.cwd())
    root = (cwd / cfg.dataset.root).resolve()
    metadata = resolve_metadata(cfg.dataset.metadata, root, cwd)
    dataset = dataclasses.replace(cfg.dataset, root=str(root), metadata=str(metadata))
    run = dataclasses.replace(cfg.run, root=str((cwd / local_folder(cfg.run.root, "run.root")).resolve()),
                              storage=cfg.run.storage if is_uri(cfg.run.storage) else absolute(cfg.run.storage, cwd))
    model = dataclasses.replace(cfg.model, weights=absolute(cfg.model.weights, cwd))
    tcam = dataclasses.replace(cfg.tcam, cams=absolute(cfg.tcam.cams, cwd),
                               classifier=classifier_path(cfg.tcam.classifier, cwd))
    return dataclasses.replace(cfg, dataset=dataset, run=run, model=model, tcam=tcam)


def classifier_path(choice: str, cwd: Path) -> str:
    """tcam.classifier: a name ("store", "best-top1") stays a name; a path becomes absolute."""
    return absolute(choice, cwd) if "/" in choice or "\\" in choice else choice


def is_uri(path: str | None) -> bool:
    """s3://, gs://, file://, ...: a location Ray's storage (pyarrow) opens, not a local path."""
    return bool(path) and "://" in path


def local_folder(path: str, key: str) -> str:
    """Run folders are written with plain file I/O: a URI there is a mistake worth explaining."""
    if is_uri(path):
        raise ConfigError(f"config key '{key}': {path!r} is a URI, but run folders (metrics.jsonl, checkpoints) "
                          "are written as files: give a folder (on a cluster, one every node mounts) and put "
                          "the URI in run.storage, where Ray keeps its run state and Tune's experiment")
    return path


def absolute(path: str | None, cwd: Path) -> str | None:
    return str((cwd / path).resolve()) if path else None


PACKAGED_METADATA = Path(__file__).resolve().parent.parent / "data" / "metadata"
PACKAGED_PREFIX = "package:"


def resolve_metadata(metadata: str | None, root: Path, cwd: Path) -> Path:
    """{root}/metadata by default; `package:NAME` names split files shipped with tcam-ray."""
    if not metadata:
        return root / "metadata"
    if metadata.startswith(PACKAGED_PREFIX):
        name = metadata[len(PACKAGED_PREFIX):]
        folder = PACKAGED_METADATA / name
        if not folder.is_dir():
            shipped = sorted(p.name for p in PACKAGED_METADATA.iterdir() if p.is_dir())
            raise ConfigError(f"config key 'dataset.metadata': no packaged metadata {name!r}; shipped: {', '.join(shipped)}")
        return folder
    return (cwd / metadata).resolve()
