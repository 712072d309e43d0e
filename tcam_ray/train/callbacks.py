"""Ray Train callbacks, run on Ray Train's controller (an actor on the driver's node), and the channel that
brings what they see to the driver."""
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


class ReportChannel:
    """A small actor (no CPU) between the training and the driver, which empties it while it waits for
    `fit()`: epoch reports from `ReportToDriver`, step progress from rank 0 (progress.StepMeter) and where
    the worker group runs (context.RayTrainContext.record_placement)."""

    def __init__(self):
        self.messages: list[tuple[str, dict]] = []

    def put(self, kind: str, item: dict) -> None:
        self.messages.append((kind, item))

    def take(self) -> list[tuple[str, dict]]:
        messages, self.messages = self.messages, []
        return messages


class ReportToDriver(UserCallback):
    """Each epoch's report, as Ray Train hands it to its callbacks: rank 0's metrics (it validates) go to
    the driver's console and experiment loggers through `channel`. Waits for the channel to hold them, so
    that the last epoch's report is there when `fit()` returns."""

    def __init__(self, channel):
        self.channel = channel

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        import ray

        ray.get(self.channel.put.remote("epoch", metrics[0]))
