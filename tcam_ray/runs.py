"""Run folders: every verb that produces results writes them under {run.root}/{run.name}."""
from __future__ import annotations

import time
from pathlib import Path

from .config import Config, RunConfig, dump_config, is_uri
from .io import atomic_write_text, writing

CONFIG_FILE = "config.yaml"


def run_folder(cfg: Config, verb: str) -> Path:
    """Where a run of `verb` writes: {run.root}/{run.name}, the name defaulting to {verb}-{timestamp}."""
    return Path(cfg.run.root) / (cfg.run.name or f"{verb}-{time.strftime('%Y%m%d-%H%M%S')}")


def create_run_dir(cfg: Config, verb: str, folder: Path | None = None) -> Path:
    """The run folder (`folder`, or `run_folder`; created if needed) with the resolved config written
    into it. Call it after the checks that can refuse the run: a refused run leaves no folder."""
    run_dir = folder or run_folder(cfg, verb)
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg))
    return run_dir


def join_storage(base: str, *parts: str) -> str:
    """`base`/`parts` for a local path or a URI alike."""
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base).joinpath(*parts))


def ray_storage_path(run: RunConfig, run_dir: Path) -> str:
    """Where Ray keeps its own state of a run (Ray Train checkpoints and snapshots, Tune's
    experiment): run.storage/{run folder name} when run.storage is set (a shared path or a URI
    such as s3://bucket/runs), else {run folder}/ray."""
    if run.storage:
        return join_storage(run.storage, Path(run_dir).name)
    return str(Path(run_dir) / "ray")


def upload_files(paths: list[Path], uri: str) -> None:
    """Copy local files into the folder at `uri` (s3://, gs://, file://, ...) with pyarrow."""
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
    filesystem.create_dir(root, recursive=True)
    for path in paths:
        pyarrow.fs.copy_files(str(path), f"{root}/{Path(path).name}", destination_filesystem=filesystem)
