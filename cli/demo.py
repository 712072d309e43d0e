from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tcam_ray.demo import run_demo

from .common import AddressOption, ConfigOption, SetOption, load_config


def demo(
    out: Annotated[Path, typer.Option(help="Demo folder: data/, cam/, cams.parquet, tcam-n*/, eval-*/, report.json.")]
    = Path("runs/demo"),
    config: ConfigOption = None,
    set_: SetOption = None,
    address: AddressOption = None,
):
    """The whole chain on the embedded local Ray (or the cluster at --address / RAY_ADDRESS): synthetic
    dataset, stage 1, CAM store, stage 2 (TCAM) and its n ablation, evaluation on the test split, and
    a report (report.json, summary.md, comparison.png). Re-running picks up finished steps from OUT. Knobs: the demo
    section (epochs and learning rate per stage, the n values of the ablation) and all others."""
    cfg = load_config(config, set_, **{"scale.address": address})
    report = run_demo(cfg, out, say=typer.echo)
    typer.echo("")
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"report: {(out / 'report.json').resolve()}")
    cam, tcam = report["stages"]["cam"]["corloc"], report["stages"]["tcam"]["corloc"]
    typer.echo(f"CorLoc: CAM {cam:.1f}%  TCAM {tcam:.1f}%  ({tcam - cam:+.1f} points)")
