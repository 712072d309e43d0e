"""`tcam-ray demo` on a tiny synthetic set, two seeds: every method's test CorLoc as mean +- std over
seeds in report.json (with the stages readers already know), summary.md and comparison.png."""
from __future__ import annotations

import json

import pytest

from tcam_ray.config import load, resolve_paths
from tcam_ray.demo import run_demo, summary_markdown

from .conftest import TINY_RUN

TINY_DEMO = ["synth.classes=2", "synth.videos=2", "synth.val_videos=1", "synth.test_videos=1", "synth.shots=2",
             "synth.frames=8", "synth.size=48", "synth.eval_stride=2", "demo.seeds=2", "demo.cam_epochs=1",
             "demo.tcam_epochs=1", "demo.colocam_epochs=1", "demo.ablation=[0]", "tcam.n=1",
             "tcam.classifier=best-top1", "demo.colocam.fg_seeds=20", "demo.colocam.bg_seeds=20"]


def test_demo_reports_every_method_over_seeds(tmp_path, local_ray):
    overrides = [o for o in TINY_RUN if not o.startswith("run.name")] + TINY_DEMO
    cfg = resolve_paths(load(overrides=[*overrides, f"run.root={tmp_path}"]))
    lines = []
    report = run_demo(cfg, tmp_path / "demo", say=lines.append)
    methods = report["methods"]
    assert list(methods) == ["CAM", "LayerCAM", "TCAM", "CoLo-CAM"]
    for summary in methods.values():
        corlocs = [run["corloc"] for run in summary["runs"]]
        assert len(corlocs) == 2 and summary["corloc_mean"] == pytest.approx(sum(corlocs) / 2)
        assert summary["corloc_std"] == pytest.approx(abs(corlocs[0] - corlocs[1]) / 2 ** 0.5)  # sample std
    assert report["seeds"] == [0, 1]
    assert report["stages"]["cam"]["corloc"] == methods["CAM"]["corloc_mean"]
    best = report["stages"]["tcam"]
    assert best["method"] in ("TCAM", "CoLo-CAM") and best["corloc"] == max(
        methods["TCAM"]["corloc_mean"], methods["CoLo-CAM"]["corloc_mean"])
    assert set(report["ablation_n"]) == {"0", "1"}
    on_disk = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert on_disk["methods"]["CoLo-CAM"]["runs"] == methods["CoLo-CAM"]["runs"]
    summary_md = (tmp_path / "demo" / "summary.md").read_text()
    assert "| CoLo-CAM |" in summary_md and "+-" in summary_md
    assert "Temporal pooling ablation" in summary_md
    without_ablation = {**report, "ablation_n": {"1": report["ablation_n"]["1"]},
                        "ablation_n_std": {"1": report["ablation_n_std"]["1"]}}
    assert "Temporal pooling ablation" not in summary_markdown(without_ablation, cfg)
    assert (tmp_path / "demo" / "comparison.png").stat().st_size > 0
    assert (tmp_path / "demo" / "seed-1" / "colocam" / "checkpoints" / "best-corloc").is_dir()
    again = run_demo(cfg, tmp_path / "demo", say=lines.append)  # finished steps are reused
    assert again["methods"] == methods
