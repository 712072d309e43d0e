"""`tcam-ray`: one verb per user job. Each verb is a thin call into the tcam_ray library."""
from __future__ import annotations

import sys

import typer

from tcam_ray.config import ConfigError
from tcam_ray.data import DatasetError
from tcam_ray.io import UnreadableFileError

from . import bench, cams, config_cmd, demo, doctor, evaluate, index, synth, train
from . import ingest, localize
from . import tune
from .common import CliError, stderr

app = typer.Typer(
    name="tcam-ray",
    help="Weakly-supervised video object localization with TCAM, on Ray. "
    "Every verb takes --config FILE and --set section.key=value overrides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(synth.synth)
app.command()(index.index)
app.command()(train.train)
app.command()(cams.cams)
app.command()(evaluate.evaluate)
app.command()(demo.demo)
app.command()(bench.bench)
app.command()(doctor.doctor)
app.command()(config_cmd.config)
app.command()(ingest.ingest)
app.command()(localize.localize)
app.command()(tune.tune)


def main() -> None:
    try:
        app()
    except (CliError, ConfigError, DatasetError, UnreadableFileError) as err:
        stderr.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
