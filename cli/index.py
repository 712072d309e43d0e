from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigOption, SetOption, load_config, progress_bar


def index(
    root: Annotated[Optional[Path], typer.Option(help="Dataset root (same as --set dataset.root=...).")] = None,
    metadata: Annotated[Optional[Path], typer.Option(help="Metadata folder; default ROOT/metadata.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the index; default RUN_DIR/frame_index.parquet.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Check a dataset in the YouTube-Objects layout and write its frame index (Parquet).

    Every problem is reported with its file and line: missing frames or shot folders, empty shots, labels outside class_id.yaml, malformed lines, sizes that disagree with image_sizes.txt.
    """
    from tcam_ray.data import index_dataset
    from tcam_ray.runs import create_run_dir

    cfg = load_config(config, set_, **{"dataset.root": root, "dataset.metadata": metadata})
    with progress_bar("indexing shots and frames") as (advance, set_total):
        frame_index = index_dataset(cfg.dataset, progress=advance, on_total=set_total)
    run_dir = create_run_dir(cfg, "index")
    path = frame_index.write(out or run_dir / "frame_index.parquet")
    report(frame_index)
    typer.echo(f"frame index: {path}")
    typer.echo(f"run folder: {run_dir}")


def report(frame_index) -> None:
    table = frame_index.table
    typer.echo(f"dataset: {frame_index.info.dataset} ({frame_index.info.root})")
    typer.echo(f"classes ({len(frame_index.info.classes)}): {', '.join(frame_index.info.classes)}")
    splits = table["split"].to_pylist()
    shots = Counter(split for split, _ in set(zip(splits, table["shot_id"].to_pylist())))
    boxes = Counter()
    for split, frame_boxes in zip(splits, table["boxes"].to_pylist()):
        boxes[split] += len(frame_boxes)
    for split, frames in frame_index.counts().items():
        typer.echo(f"{split}: {frames} frames in {shots[split]} shots, {boxes[split]} boxes")
    typer.echo(f"fingerprint: {frame_index.info.fingerprint[:16]}")
