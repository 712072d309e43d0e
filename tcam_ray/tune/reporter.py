"""Progress of a sweep on the driver: one line per trial epoch, one when a trial ends."""
from __future__ import annotations

from ray.tune import Callback


class EpochReporter(Callback):
    """Tune pickles its callbacks with the experiment and a restored sweep uses those: this one
    only holds plain values and prints to stdout."""

    def __init__(self, metric: str, max_t: int):
        self.metric, self.max_t = metric, max_t
        self.epochs: dict[str, int] = {}

    @staticmethod
    def say(line: str) -> None:
        print(line, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "-"
        self.epochs[trial.trial_id] = result.get("epoch", 0)
        self.say(f"trial {trial.trial_id} epoch {result.get('epoch')}/{self.max_t}: {self.metric} {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = self.epochs.get(trial.trial_id, 0)
        how = "finished" if epochs >= self.max_t else "stopped early"
        self.say(f"trial {trial.trial_id} {how} after {epochs} epoch(s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.say(f"trial {trial.trial_id} failed; its error is in {trial.local_path}")
