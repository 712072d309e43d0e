"""The errors a user can act on. Each message names the file, key or value at fault and fits on one
line; the CLI prints it without a traceback and exits with the error's `exit_code`."""
from __future__ import annotations


class TcamRayError(Exception):
    """A problem the user can act on (bad input, a damaged file, a full disk, a failed run)."""

    exit_code = 2


class UnreadableFileError(TcamRayError, ValueError):
    """A file that is missing a part, empty, truncated, damaged or unsafe to load; the message names it."""


class WriteFailedError(TcamRayError):
    """A file or folder that could not be written (full disk, read-only folder, ...); the message names the
    path and the errno, and the half-written temporary files are already gone."""


class TrainingFailedError(TcamRayError):
    """A training that stopped on an error after its retries; the message says how to resume it."""

    exit_code = 1


class InterruptedRunError(TcamRayError):
    """Ctrl-C (SIGINT) or SIGTERM during a run; the message says how to resume it."""

    exit_code = 130
