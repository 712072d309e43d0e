"""`tcam-ray`: one verb per user job. Each verb is a thin call into the tcam_ray library."""
from __future__ import annotations

import os
import signal
import sys
import traceback

import typer

from tcam_ray.errors import InterruptedRunError, TcamRayError
from tcam_ray.io import describe_os_error

# Verb modules are cheap to import: typer, tcam_ray.config and .common at their top, everything heavy (torch,
# Ray, cv2, the library's training and video code) inside the verb function, so that `tcam-ray --help` and the
# quick verbs start in a fraction of a second (tests/test_imports.py). A new verb: a module cli/NAME.py with a
# function NAME whose docstring paragraphs are one line each, imported here and registered below with
# app.command()(NAME.NAME).
from . import bench, cams, checkpoint, config_cmd, demo, doctor, evaluate, export, index, ingest, localize, synth, train, tune
from .common import stderr

app = typer.Typer(
    name="tcam-ray",
    help="Weakly-supervised video object localization with TCAM, on Ray. "
    "Every verb takes --config FILE and --set section.key=value overrides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
SHOW_TRACEBACKS = {"on": False}


def debug_from_environment() -> bool:
    return os.environ.get("TCAM_RAY_DEBUG", "") not in ("", "0")


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error (also: "
                                                               "TCAM_RAY_DEBUG=1).")) -> None:
    SHOW_TRACEBACKS["on"] = debug or debug_from_environment()


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
app.command()(export.export)
app.command()(tune.tune)
app.add_typer(checkpoint.app, name="checkpoint")


def main() -> None:
    """`tcam-ray`: an error the user can act on is one line on stderr (the traceback with --debug), exit
    code 2 (1: a training that failed after its retries; 130: interrupted by Ctrl-C or SIGTERM)."""
    signal.signal(signal.SIGTERM, stop_as_if_interrupted)  # schedulers stop jobs with SIGTERM
    SHOW_TRACEBACKS["on"] = debug_from_environment()  # until the --debug option is read
    try:
        app()
    except KeyboardInterrupt:
        fail(InterruptedRunError("interrupted"))
    except TcamRayError as err:
        fail(err)
    except OSError as err:  # a file the library did not expect to fail (permissions, a full disk, ...)
        fail(TcamRayError(f"{err.filename}: {describe_os_error(err)}" if err.filename else describe_os_error(err)))


def stop_as_if_interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def fail(err: TcamRayError) -> None:
    if SHOW_TRACEBACKS["on"]:
        traceback.print_exc()
    stderr.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    sys.exit(err.exit_code)
