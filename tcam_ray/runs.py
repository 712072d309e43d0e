"""Run folders: every verb that produces results writes them under {run.root}/{run.name}."""
from __future__ import annotations

import time
from pathlib import Path

from .config import Config, dump_config
from .io import atomic_write_text

CONFIG_FILE = "config.yaml"


def create_run_dir(cfg: Config, verb: str) -> Path:
    """The run folder (created if needed) with the resolved config written into it."""
    name = cfg.run.name or f"{verb}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg))
    return run_dir
