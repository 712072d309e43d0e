"""What the data/train/store benchmarks share: a dataset to run on and the record format."""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from ..config import Config
from ..data import metadata_folder
from ..data.synthetic import generate


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def record(bench: str, case: str, value: float, unit: str, baseline: float | None, baseline_name: str,
           higher_is_better: bool, config: dict) -> dict:
    """One case as `tcam-ray bench` prints it (a JSON line); speedup > 1 means ours is better than the
    baseline measured in the same run (times: baseline/ours; throughputs: ours/baseline)."""
    speedup = None
    if baseline:
        speedup = value / baseline if higher_is_better else baseline / value
    return {"bench": bench, "case": case, "value": round(value, 4), "unit": unit,
            "baseline": None if baseline is None else round(baseline, 4), "baseline_name": baseline_name,
            "speedup": None if speedup is None else round(speedup, 3), "config": config}


def dataset_for(cfg: Config, scratch: Path) -> Config:
    """cfg's dataset when it exists on disk, else a synthetic one made in `scratch` (its own config)."""
    if metadata_folder(cfg.dataset).is_dir():
        return cfg
    root = scratch / "synthetic"
    log(f"no dataset at {cfg.dataset.root}: generating the synthetic one ({cfg.synth}) in {root}")
    generate(cfg.synth, root)
    dataset = dataclasses.replace(cfg.dataset, root=str(root), metadata=str(root / "metadata"))
    return dataclasses.replace(cfg, dataset=dataset)


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="tcam-ray-bench-")
