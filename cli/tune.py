from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import AddressOption, SetOption


def tune(
    config: Annotated[Path, typer.Option("--config", "-c", help="Sweep file, or the NAME of one that ships with "
                                         "tcam-ray (e.g. tune-synthetic; `tcam-ray config --list`): the training "
                                         "config it overlays, the search space, the metric and ASHA.")],
    set_: SetOption = None,
    address: AddressOption = None,
    num_samples: Annotated[Optional[int], typer.Option(help="Replace the sweep's num_samples.")] = None,
    max_concurrent_trials: Annotated[Optional[int], typer.Option(
        help="Replace the sweep's max_concurrent_trials (default: as many trials as the cluster's CPUs/GPUs hold).")]
    = None,
    trust_sweep_state: Annotated[bool, typer.Option(
        "--trust-sweep-state", help="Only for a sweep you started yourself with a tcam-ray that did not mark its "
        "sweeps: resume it although it has no owner marker, and mark it as yours. Its Tune state is pickled Python "
        "that runs code when loaded: never use this for a sweep folder you received.")] = False,
):
    """Search a training's settings with Ray Tune and ASHA: every trial trains stage cam or tcam on Ray Train workers and reports val CorLoc (or the sweep's metric) each epoch; ASHA stops the trials that fall behind.

    --set overrides the training config (e.g. --set tcam.cams=STORE). The sweep folder ({run.root}/{run.name}, default runs/tune-{timestamp}) gets each trial's run folder under trials/, results.csv, best.yaml (the best trial's config, ready for `tcam-ray train`) and a plot of the metric per epoch. Running the same command with the same run.name resumes an interrupted sweep (Tuner.restore): errored and unfinished trials go on from their last checkpoint.

    Only your own sweeps resume: Tune's state is pickled Python that could run code, so a new sweep is marked with a key of yours ($TCAM_RAY_KEY_FILE, else ~/.config/tcam-ray/key, made on first use; copy it to resume your sweeps on another machine), and a sweep folder without your mark is refused before Ray starts. With run.storage on a URI the mark stays in the local sweep folder.
    """
    from tcam_ray.tune.sweep import load_sweep
    from tcam_ray.tune.tuner import run_sweep

    overrides = [*(set_ or []), *([f"scale.address={address}"] if address else [])]
    sweep = load_sweep(config, overrides, num_samples=num_samples, max_concurrent_trials=max_concurrent_trials)
    result = run_sweep(sweep, say=typer.echo, trust_sweep_state=trust_sweep_state)
    typer.echo("")
    typer.echo(result.table)
    typer.echo(f"\nresults: {result.csv}\nplot: {result.plot}")
    if result.best_yaml:
        typer.echo(f"best config: {result.best_yaml}\nbest checkpoints: {result.best.run_dir / 'checkpoints'}")
    failed = [row.trial_id for row in result.rows if row.status in ("error", "unfinished")]
    if failed:
        typer.echo(f"{len(failed)} trial(s) did not finish ({', '.join(failed)}); run the same command again "
                   f"(run.name={result.sweep_dir.name}) to resume them", err=True)
        raise typer.Exit(1)
