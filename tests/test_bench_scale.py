"""`tcam-ray bench scale`: both stages at 1 and 2 workers (the most this 2-CPU machine holds at 0.5 CPU each
beside the decode reserve), with efficiency against the one-worker figure of the same run."""
from __future__ import annotations

import pytest

from tcam_ray.bench.scale import run_scale_bench

from .conftest import tiny_run_config


def test_bench_scale_measures_both_stages_at_each_worker_count(dataset_root, tmp_path):
    cfg = tiny_run_config(dataset_root, tmp_path, "scale.cpus_per_worker=0.5", "scale.local_cpus=2")
    records = list(run_scale_bench(cfg, repeats=1))
    assert [(r["config"]["stage"], r["config"]["workers"]) for r in records] == [
        ("cam", 1), ("cam", 2), ("tcam", 1), ("tcam", 2)]
    for stage in ("cam", "tcam"):
        one, two = (r for r in records if r["config"]["stage"] == stage)
        assert one["value"] > 0 and one["config"]["efficiency"] == 1.0
        assert two["baseline"] == pytest.approx(2 * one["value"], rel=1e-3)
        assert two["config"]["efficiency"] == pytest.approx(two["value"] / (2 * one["value"]), abs=1e-3)
