"""`tcam-ray bench scale` at 1 and 2 workers (the most this 2-CPU machine holds at 0.5 CPU each beside the
decode reserve), with efficiency against the one-worker figure of the same run. Stage 2 only (4 Ray fits for
both stages cost 2.5 minutes): it goes through everything stage 1 does, and the CAM store made for it."""
from __future__ import annotations

import pytest

from tcam_ray.bench.scale import run_scale_bench

from .conftest import tiny_run_config


def test_bench_scale_measures_both_stages_at_each_worker_count(dataset_root, tmp_path):
    cfg = tiny_run_config(dataset_root, tmp_path, "scale.cpus_per_worker=0.5", "scale.local_cpus=2")
    one, two = run_scale_bench(cfg, repeats=1, stages=("tcam",))
    assert [(r["config"]["stage"], r["config"]["workers"]) for r in (one, two)] == [("tcam", 1), ("tcam", 2)]
    assert one["value"] > 0 and one["config"]["efficiency"] == 1.0
    assert two["baseline"] == pytest.approx(2 * one["value"], rel=1e-3)
    assert two["config"]["efficiency"] == pytest.approx(two["value"] / (2 * one["value"]), abs=1e-3)
