from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import AddressOption, ConfigOption, SetOption, load_config


def demo(
    out: Annotated[Path, typer.Option(help="Demo folder: data/, cam/, cams.parquet, tcam-n*/, eval-*/, report.json.")]
    = Path("runs/demo"),
    config: ConfigOption = None,
    set_: SetOption = None,
    address: AddressOption = None,
    seeds: Annotated[Optional[int], typer.Option(help="Run the chain this many times (train.seed, +1, ...) "
                                                       "and report mean +- std (demo.seeds).")] = None,
):
    """The whole chain on the embedded local Ray (or the cluster at --address / RAY_ADDRESS): synthetic dataset, then per seed stage 1, the CAM and LayerCAM stores, TCAM (and its n ablation) and CoLo-CAM, every method on the test split; a report of each method's CorLoc as mean +- std over seeds (report.json, summary.md, comparison.png). Re-running picks up finished steps from OUT. Knobs: the demo section (seeds, epochs and learning rate per stage, the n ablation, CoLo-CAM's settings) and all others."""
    from tcam_ray.demo import run_demo

    cfg = load_config(config, set_, **{"scale.address": address, "demo.seeds": seeds})
    report = run_demo(cfg, out, say=typer.echo)
    typer.echo("")
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"report: {(out / 'report.json').resolve()}")
    cam, best = report["stages"]["cam"], report["stages"]["tcam"]
    typer.echo(f"CorLoc: CAM {cam['corloc']:.1f} +- {cam['corloc_std']:.1f}%  {best['method']} {best['corloc']:.1f} "
               f"+- {best['corloc_std']:.1f}%  ({best['corloc'] - cam['corloc']:+.1f} points)")
