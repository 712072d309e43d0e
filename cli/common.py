"""What every verb shares: --config/--set, error reporting, progress bars."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tcam_ray.config import Config, load, resolve_paths
from tcam_ray.errors import TcamRayError

stderr = Console(stderr=True)


class CliError(TcamRayError):
    """A mistake in how a verb was called; printed without a traceback, exit code 2."""

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML config file (may name one `base:` file), or the NAME of one that ships "
                 "with tcam-ray (`tcam-ray config --list`).", show_default=False),
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override one key, e.g. --set dataset.root=/data/yto (repeatable).",
                 show_default=False),
]

AddressOption = Annotated[
    Optional[str],
    typer.Option("--address", help="Run on this Ray cluster: 'auto' or HOST:6379, its GCS address (sets "
                                   "scale.address). Default: RAY_ADDRESS (set inside `ray job submit` jobs), else "
                                   "an embedded local Ray. Run folders must be on storage the cluster's nodes share.",
                 show_default=False),
]


def load_config(config: Path | None, sets: list[str] | None, **flags) -> Config:
    """Defaults <- --config file <- --set overrides <- this verb's own flags (given ones only).

    `flags` maps dotted keys to values; None means the flag was not given.
    """
    overrides = list(sets or [])
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    return resolve_paths(load(config, overrides))


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator:
    """Yields (advance(n), set_total(n)); draws on stderr from the first call of either, so that an
    error found before any work (a bad file, a wrong key) is the only line printed."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    progress = Progress(*columns, console=stderr, transient=False)
    tasks = []

    def task():
        if not tasks:
            progress.start()
            tasks.append(progress.add_task(description, total=total))
        return tasks[0]
    try:
        yield (lambda n=1: progress.advance(task(), n)), (lambda n: progress.update(task(), total=n))
    finally:
        if tasks:
            progress.stop()


def exit_if_any_failed(failures: list, total: int, where: str = "see above") -> None:
    """List the videos (or other inputs) that failed; exit code 1 when any did, after the rest ran."""
    for error in failures:
        typer.echo(f"  failed {error}")
    if failures:
        typer.echo(f"{len(failures)} of {total} videos failed ({where})")
        raise typer.Exit(1)


def print_video_outcome(outcome, describe_done) -> None:
    """One line per finished video on stderr: the error (a VideoError) in red, else describe_done(outcome)."""
    from tcam_ray.video.reader import VideoError

    text = f"[red]failed[/] {outcome}" if isinstance(outcome, VideoError) else f"done {describe_done(outcome)}"
    stderr.print(text, highlight=False, soft_wrap=True)
