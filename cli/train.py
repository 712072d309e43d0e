from __future__ import annotations

from typing import Annotated

import typer

from .common import AddressOption, CliError, ConfigOption, SetOption, load_config


def train(
    stage: Annotated[str, typer.Option(help="cam: stage 1, the CAM classifier; tcam: stage 2, the TCAM decoder "
                                            "(needs --set tcam.cams=STORE from `tcam-ray cams`).")] = "cam",
    config: ConfigOption = None,
    set_: SetOption = None,
    address: AddressOption = None,
):
    """Train stage 1 (cam) or stage 2 (tcam) on Ray Train workers (scale.num_workers; 0 = in this process, without Ray).

    Runs on the embedded local Ray, or on the cluster at scale.address / RAY_ADDRESS. The run folder ({run.root}/{run.name}) gets config.yaml, frame_index.parquet, metrics.jsonl, checkpoints/ (last train.keep_last epochs, best-corloc, best-top1), curves.png, and the best-CorLoc checkpoint's evaluation (report.json, corloc_threshold.png, cams.png). Running again with the same run.name resumes from its last checkpoint.
    """
    from tcam_ray.train.evaluate import evaluate_checkpoint, summary_lines
    from tcam_ray.train.loop import STAGES
    from tcam_ray.train.trainer import run_training

    if stage not in STAGES:
        raise CliError(f"unknown stage {stage!r}; available: {', '.join(STAGES)}")
    cfg = load_config(config, set_, **{"scale.address": address})
    result = run_training(cfg, stage)
    typer.echo(f"run folder: {result.run_dir}")
    if result.best_corloc is not None:
        report = evaluate_checkpoint(result.best_corloc, cfg, cfg.eval.split, result.run_dir)
        typer.echo(f"best-CorLoc checkpoint: {result.best_corloc}")
        for line in summary_lines(report):
            typer.echo(line)
