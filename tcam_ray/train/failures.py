"""How a training ends when something goes wrong, in a Ray Train worker or on the driver.

- An error the user must fix (a corrupt frame met by a decode task, a damaged file, a full disk:
  a `TcamRayError`) reaches the driver as itself, however deep Ray wrapped it, and ends the run at
  once: retrying the worker group would meet it again.
- Any other worker failure (a crash, a killed process) is retried `scale.max_failures` times from
  the last checkpoint; after that, and on Ctrl-C, the user gets one line saying how to resume.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InterruptedRunError, TcamRayError, TrainingFailedError
from .checkpoints import CheckpointKeeper


def user_error_in(error: BaseException) -> TcamRayError | None:
    """The TcamRayError that caused `error`: itself, its causes, the `cause` Ray keeps of a task's error, or
    the failure a Ray Train ControllerError / WorkerGroupError holds."""
    seen, pending = set(), [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        ray_cause = getattr(current, "cause", None)  # a RayTaskError(DatasetError) holds the plain DatasetError
        if isinstance(current, TcamRayError) and not isinstance(ray_cause, TcamRayError):
            return current
        pending += [ray_cause, current.__cause__, current.__context__, getattr(current, "controller_failure", None),
                    *(getattr(current, "worker_failures", None) or {}).values()]
    return None


def resume_hint(run_dir: Path) -> str:
    point = CheckpointKeeper(run_dir, keep_last=1).resume_point()
    if point.folder is None:
        return "rerun the same command to start it again (no checkpoint was written yet)"
    return f"rerun the same command to resume after epoch {point.epoch} (its last checkpoint)"


def interrupted(run_dir: Path) -> InterruptedRunError:
    return InterruptedRunError(f"interrupted; {resume_hint(run_dir)}")


def training_failed(error: BaseException, run_dir: Path, logs: str) -> TrainingFailedError:
    """One line for a worker group that failed after its retries: which rank, its error, how to resume, and
    where Ray keeps the workers' logs."""
    failures = getattr(error, "worker_failures", None) or {}
    if failures:
        rank, failure = sorted(failures.items())[0]
        what = f"worker rank {rank}: {first_line(failure)}"
    else:
        what = first_line(error)
    return TrainingFailedError(f"training failed on {what}; {resume_hint(run_dir)} (Ray's worker logs: "
                               f"{logs}/train)")


def first_line(error: BaseException) -> str:
    """The gist of an error: the last line of a Python traceback, or what Ray says of a dead worker."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any("actor died" in line or "worker process has died" in line for line in lines):
        return "its worker process died (killed, or out of memory)"
    text = lines[-1] if lines else ""
    return text if ":" in text else f"{type(error).__name__}: {text}"
