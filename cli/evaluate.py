from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigOption, SetOption, load_config


def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint folder (e.g. RUN/checkpoints/best-corloc).")],
    split: Annotated[Optional[str], typer.Option(help="val or test; default eval.split.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """CorLoc (MaxBoxAcc at IoU 0.5), MaxBoxAccV2, per-class CorLoc and top-1 of a checkpoint on a split.

    The dataset comes from the config (default: the one the checkpoint was trained on is not assumed; pass --config/--set dataset.root). Writes report.json, corloc_threshold.png and cams.png into a run folder.
    """
    from tcam_ray.runs import create_run_dir, run_folder
    from tcam_ray.train.evaluate import evaluate_checkpoint, summary_lines

    cfg = load_config(config, set_, **{"eval.split": split})
    run_dir = run_folder(cfg, "evaluate")
    report = evaluate_checkpoint(checkpoint, cfg, cfg.eval.split, run_dir)  # the folder is made once it has run
    create_run_dir(cfg, "evaluate", run_dir)
    for line in summary_lines(report):
        typer.echo(line)
    typer.echo(f"report: {run_dir / 'report.json'}")
