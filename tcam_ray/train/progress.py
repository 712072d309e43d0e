"""What a training shows while it runs, the same with Ray Train workers or in this process: a line per
epoch and split (`epoch_line`) made from each epoch's report, and the step rate and running loss of the
epoch under way (rank 0's `StepMeter`), redrawn in place on a terminal and a line now and then otherwise.

On Ray, reports reach the driver through Ray Train's own reporting: `ray.train.report` on the workers,
`callbacks.ReportToDriver.after_report` on the controller, which hands rank 0's metrics to a small actor
(`callbacks.ReportChannel`) that the driver empties while it waits for `fit()`. Rank 0's step progress
takes the same channel (worker prints stay in Ray's log folder: the driver runs Ray with
log_to_driver=False, and RAY_TRAIN_ENABLE_PRINT_PATCH=0 leaves a worker's print() on its own stdout).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable

STEP_INTERVAL_S = 1.0  # rank 0 sends its step progress at most this often
CLEAR_LINE = "\r\033[K"


def epoch_line(record: dict, epochs: int) -> str:
    head = f"epoch {record['epoch']}/{epochs} {record['split']:>5}:"
    if record["split"] == "train":
        waited = f", {record['data_seconds']:.1f} s waiting for data" if "data_seconds" in record else ""
        seconds = record.get("seconds", 0)
        return f"{head} loss {record['loss']:.3f}  top1 {record['top1']:.1f}%  ({seconds:.1f} s{waited})"
    if record.get("corloc") is None:
        return f"{head} no frames with boxes"
    return (f"{head} CorLoc {record['corloc']:.1f}%  MaxBoxAccV2 {record['maxboxacc_v2']:.1f}%  "
            f"top1 {record['top1']:.1f}%")


def epoch_records(report: dict, split: str) -> list[dict]:
    """One epoch's metrics.jsonl records (train, then `split` where rank 0 validated) from its report's flat
    keys (Runner.end_epoch: epoch, train_*, val_*)."""
    train = {key.removeprefix("train_"): value for key, value in report.items() if key.startswith("train_")}
    val = {key.removeprefix("val_"): value for key, value in report.items() if key.startswith("val_")}
    epoch = report["epoch"]
    return [{"epoch": epoch, "split": "train", **train}, *([{"epoch": epoch, "split": split, **val}] if val else [])]


def workers_line(record: dict) -> str:
    """`workers: 2 on 2 nodes: rank 0 on 10.0.0.5 (node 3f2a1b0c, cuda:0), rank 1 on ...`"""
    workers = record["workers"]
    nodes = len({worker["node_id"] for worker in workers})
    ranks = ", ".join(f"rank {w['rank']} on {w['ip']} (node {w['node_id'][:8]}, {w['device']})" for w in workers)
    return f"workers: {len(workers)} on {nodes} node{'s' if nodes > 1 else ''}: {ranks}"


def step_line(progress: dict, epochs: int) -> str:
    return (f"epoch {progress['epoch']}/{epochs} train: step {progress['step']}/{progress['steps']}  "
            f"{progress['steps_per_s']:.2f} steps/s  loss {progress['loss']:.3f}")


class StepMeter:
    """Rank 0's way through an epoch: after its first step and then at most every `interval` seconds it
    sends the step, the steps per second since its last message and the epoch's running mean loss.
    Reading the loss (a device sync on a GPU) happens once per message, never per step."""

    def __init__(self, send: Callable[[dict], None], epoch: int, steps: int, interval: float = STEP_INTERVAL_S,
                 clock: Callable[[], float] = time.perf_counter):
        self.send, self.epoch, self.steps, self.interval, self.clock = send, epoch, steps, interval, clock
        self.sent_at, self.sent_step = clock(), 0

    def update(self, step: int, sums: dict) -> None:
        now = self.clock()
        if self.sent_step and now - self.sent_at < self.interval:
            return
        loss = float(sums["loss"]) / max(float(sums["samples"]), 1.0)
        self.send({"epoch": self.epoch, "step": step, "steps": self.steps,
                   "steps_per_s": (step - self.sent_step) / max(now - self.sent_at, 1e-9), "loss": loss})
        self.sent_at, self.sent_step = now, step


class TrainingConsole:
    """The driver's view of a training, fed by both paths: each epoch's report becomes its epoch lines
    (through `out`) and goes to the experiment loggers; rank 0's step progress is redrawn in place on a
    terminal, or printed as a line at most every `quiet_interval` seconds otherwise (a log, a pipe).
    Epochs a resume or a restarted worker group trains again are reported, and shown, again."""

    def __init__(self, epochs: int, split: str, out: Callable[[str], None] = print, first_epoch: int = 1,
                 loggers=None, quiet_interval: float = 10.0, terminal: bool | None = None):
        self.epochs, self.split, self.out, self.loggers = epochs, split, out, loggers
        self.quiet_interval = quiet_interval
        self.terminal = terminal if terminal is not None else out is print and sys.stdout.isatty()
        self.next_epoch = first_epoch
        self.step_shown_at = -math.inf
        self.step_drawn = False

    def handle(self, messages: list[tuple[str, dict]]) -> None:
        """Messages of the report channel: ("epoch", report), ("step", progress) or ("workers", placement)."""
        shown = {"epoch": self.epoch, "step": self.step, "workers": self.workers}
        for kind, item in messages:
            shown[kind](item)

    def workers(self, record: dict) -> None:
        self.clear_step()
        self.out(workers_line(record))

    def epoch(self, report: dict) -> None:
        self.clear_step()
        for record in epoch_records(report, self.split):
            self.out(epoch_line(record, self.epochs))
        self.next_epoch = report["epoch"] + 1
        if self.loggers is not None:
            self.loggers.log_epoch(report)

    def step(self, progress: dict) -> None:
        if progress["epoch"] > self.next_epoch:
            return  # rank 0 is ahead of the controller: the previous epoch's report is still on its way
        if self.terminal:
            sys.stdout.write(CLEAR_LINE + step_line(progress, self.epochs))
            sys.stdout.flush()
            self.step_drawn = True
        elif time.monotonic() - self.step_shown_at >= self.quiet_interval:
            self.out(step_line(progress, self.epochs))
            self.step_shown_at = time.monotonic()

    def clear_step(self) -> None:
        if self.step_drawn:
            sys.stdout.write(CLEAR_LINE)
            sys.stdout.flush()
            self.step_drawn = False
