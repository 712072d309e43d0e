from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import AddressOption, ConfigOption, SetOption, load_config, progress_bar


def cams(
    checkpoint: Annotated[Path, typer.Option(help="The stage-1 checkpoint folder (e.g. RUN/checkpoints/best-corloc).")],
    out: Annotated[Optional[Path], typer.Option(help="Store path; default RUN_DIR/cams.parquet.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    address: AddressOption = None,
):
    """Compute the CAMs of every training frame (cam.method: cam, gradcampp, layercam) on a Ray Data actor pool and write the CAM store (Parquet), tagged with the dataset and checkpoint it came from."""
    from tcam_ray.data import index_dataset
    from tcam_ray.runs import create_run_dir, run_folder
    from tcam_ray.train.cams import fill_cam_store

    cfg = load_config(config, set_, **{"scale.address": address})
    run_dir = run_folder(cfg, "cams")
    frames = index_dataset(cfg.dataset).counts().get("train", 0)
    with progress_bar("computing CAMs", total=frames) as (advance, _):
        summary = fill_cam_store(cfg, checkpoint, out or run_dir / "cams.parquet", progress=advance)
    create_run_dir(cfg, "cams", run_dir)
    typer.echo(f"CAM store: {summary.path}")
    typer.echo(f"{summary.frames} frames, {summary.bytes_per_frame:.0f} bytes per frame "
               f"({cfg.cam.method}, {cfg.cam.size}x{cfg.cam.size} {cfg.cam.dtype}), {summary.seconds:.1f} s")
