"""Ray Train callbacks, run on Ray Train's controller."""
from __future__ import annotations

from ray.train import UserCallback

from .failures import user_error_in


class StopOnUserError(UserCallback):
    """A worker that failed on an error the user must fix (a TcamRayError: a corrupt frame, a damaged
    file, a full disk) ends the run at once: retrying the worker group would meet the same error."""

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        for error in worker_exceptions.values():
            user_error = user_error_in(error)
            if user_error is not None:
                raise user_error
