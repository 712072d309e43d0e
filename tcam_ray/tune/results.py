"""A sweep's results: one row per trial (sampled values, best metric, epochs run, status), as a
printed table and a CSV, the best trial's config as a ready-to-run YAML, and a plot of the
metric against the epoch for every trial."""
from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, config_from_dict, dump_config
from ..io import atomic_write_text
from ..train.metrics_log import MetricsLog
from .search_space import sampled_values
from .sweep import Sweep
from .trial import trial_run_dir

# Tune's trial states, as the table says them.
DONE, STOPPED, ERROR, UNFINISHED = "done", "stopped early", "error", "unfinished"


@dataclass
class TrialRow:
    trial_id: str
    status: str  # DONE (ran asha.max_t epochs), STOPPED (by ASHA), ERROR, UNFINISHED (sweep interrupted)
    epochs: int  # epochs Tune saw reported
    best: float | None  # best value of the sweep's metric over those epochs
    best_epoch: int | None
    params: dict[str, Any]  # dotted key -> sampled value
    run_dir: Path
    curve: list[tuple[int, float]]  # (epoch, metric) as reported
    config: dict  # the trial's whole training config (nested dict)


def trial_status(tune_status: str, epochs: int, max_t: int) -> str:
    if tune_status == "ERROR":
        return ERROR
    if tune_status == "TERMINATED":
        return DONE if epochs >= max_t else STOPPED
    return UNFINISHED


def metric_curve(run_dir: Path, metric: str, eval_split: str, frame) -> list[tuple[int, float]]:
    """(epoch, value) of the metric at every epoch, from the trial's metrics.jsonl (its whole history,
    also across a Tuner.restore, which restarts Tune's own per-trial log); from Tune's log where the
    run folder is not readable here."""
    records = MetricsLog(run_dir / "metrics.jsonl").records()
    if records:
        split, _, key = metric.partition("_")
        split = eval_split if split == "val" else split
        points = [(r["epoch"], r.get(key)) for r in records if r.get("split") == split]
    elif frame is not None and metric in frame and "epoch" in frame:
        points = list(frame[["epoch", metric]].itertuples(index=False))
    else:
        points = []
    return [(int(epoch), float(value)) for epoch, value in points if value is not None and value == value]


def best_point(curve: list[tuple[int, float]], mode: str) -> tuple[int | None, float | None]:
    finite = [(epoch, value) for epoch, value in curve if math.isfinite(value)]
    if not finite:
        return None, None
    pick = max if mode == "max" else min
    return pick(finite, key=lambda point: point[1])


def collect_rows(analysis, sweep: Sweep, sweep_dir: Path) -> list[TrialRow]:
    """One row per trial of a Tune ExperimentAnalysis, best first (trials without a value last).

    A trial's epochs are those Tune saw reported (where ASHA stopped it); its workers may have
    finished one more before they were stopped, which its run folder shows but the row leaves out."""
    frames = analysis.trial_dataframes
    rows = []
    for trial in analysis.trials:
        run_dir = trial_run_dir(sweep_dir, trial.trial_id)
        epochs = int((trial.last_result or {}).get("epoch") or 0)
        curve = [point for point in metric_curve(run_dir, sweep.metric, sweep.base.eval.split,
                                                 frames.get(trial.trial_id)) if point[0] <= epochs]
        best_epoch, best = best_point(curve, sweep.mode)
        rows.append(TrialRow(trial.trial_id, trial_status(trial.status, epochs, sweep.max_t), epochs, best,
                             best_epoch, sampled_values(trial.config, sweep.dimensions), run_dir, curve,
                             trial.config))
    sign = 1 if sweep.mode == "max" else -1
    return sorted(rows, key=lambda row: (row.best is None, -sign * (row.best or 0.0), row.trial_id))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def table_columns(sweep: Sweep) -> list[str]:
    return ["trial", *[dim.key for dim in sweep.dimensions], f"best {sweep.metric}", "at epoch", "epochs", "status"]


def table_cells(row: TrialRow) -> list[str]:
    values = [row.trial_id, *row.params.values(), row.best, row.best_epoch, row.epochs, row.status]
    return [format_value(value) for value in values]


def format_table(rows: list[TrialRow], sweep: Sweep) -> str:
    header = table_columns(sweep)
    body = [table_cells(row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def write_csv(rows: list[TrialRow], sweep: Sweep, path: Path) -> Path:
    keys = [dim.key for dim in sweep.dimensions]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial_id", *keys, f"best_{sweep.metric}", "best_epoch", "epochs", "status", "run_dir"])
        for row in rows:
            writer.writerow([row.trial_id, *row.params.values(), row.best, row.best_epoch, row.epochs, row.status,
                             row.run_dir])
    return path


def best_config(row: TrialRow, sweep: Sweep) -> Config:
    """The best trial's training config, writing into the sweep's run.root under a new name."""
    cfg = config_from_dict(row.config)
    return dataclasses.replace(cfg, run=dataclasses.replace(sweep.base.run, name=None))


def write_best_yaml(row: TrialRow, sweep: Sweep, path: Path) -> Path:
    values = ", ".join(f"{key}={format_value(value)}" for key, value in row.params.items())
    header = (f"# Best trial {row.trial_id} of the sweep {sweep.path}: {sweep.metric} {row.best:.4g} at epoch "
              f"{row.best_epoch} ({values}).\n"
              f"# Its checkpoints: {row.run_dir / 'checkpoints'}\n"
              f"# Train it again: tcam-ray train --stage {sweep.stage} --config {path}\n")
    atomic_write_text(path, header + dump_config(best_config(row, sweep)))
    return path


def plot_curves(rows: list[TrialRow], sweep: Sweep, path: Path) -> Path:
    """The metric against the epoch, one line per trial; a cross marks where ASHA stopped a trial."""
    from matplotlib.ticker import MaxNLocator

    from ..viz import new_figure, save_figure

    figure = new_figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for row in rows:
        if not row.curve:
            continue
        epochs, values = zip(*row.curve)
        params = ", ".join(f"{key.rsplit('.', 1)[-1]}={format_value(value)}" for key, value in row.params.items())
        line, = axes.plot(epochs, values, marker="o", markersize=3, label=f"{row.trial_id} ({params})")
        if row.status == STOPPED:
            axes.plot(epochs[-1], values[-1], marker="x", markersize=9, color=line.get_color())
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(sweep.metric)
    axes.set_xlim(0.5, sweep.max_t + 0.5)
    axes.set_title(f"{sweep.path.name}: {sweep.metric} per trial (x: stopped by ASHA)")
    axes.grid(alpha=0.3)
    if any(row.curve for row in rows):
        axes.legend(fontsize=7, loc="best")
    return save_figure(figure, path, dpi=120)
