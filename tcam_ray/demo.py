"""The whole chain on a synthetic dataset, once per seed: stage 1 -> CAM and LayerCAM stores -> TCAM
(and its n ablation) and CoLo-CAM -> every method on the test split -> a report of each method's
CorLoc as mean +- std over seeds (JSON, Markdown, pictures).

Each method is taken at its best on val, as the papers do: CAM and LayerCAM at the stage-1 epoch that
localised best with each (best-corloc, best-corloc-layercam), TCAM and CoLo-CAM at their best-CorLoc
epoch, both decoders on the stage-1 run's best classifier (tcam.classifier). Every step writes its own
run folder under OUT/seed-K; a step whose output is already there is reused, so an interrupted demo
picks up where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import viz
from .config import Config
from .data import index_dataset, metadata_folder
from .data.frames import IMAGE, LABEL, ROW, split_rows
from .data.synthetic import generate
from .data.tensors import normalise
from .evaluation.boxes import predict_boxes
from .io import atomic_write_text
from .train.cams import fill_cam_store
from .train.context import LocalContext
from .train.evaluate import evaluate_checkpoint, load_predictor
from .train.runner import EvalTargets
from .train.trainer import run_training

Say = Callable[[str], None]
GRID_FRAMES = 8
CAM_METHOD = {"CAM": "cam", "LayerCAM": "layercam"}  # stage-1 rows: their map and their best checkpoint
STAGE2_METHODS = ("TCAM", "CoLo-CAM")
SUMMARY_KEYS = ("corloc", "maxboxacc_v2", "top1")


@dataclass
class SeedRun:
    """One run of the chain: each method's test report and checkpoint, the n ablation, seconds per step."""

    seed: int
    reports: dict[str, dict] = field(default_factory=dict)  # method -> evaluate_checkpoint's stage entry
    checkpoints: dict[str, Path] = field(default_factory=dict)
    ablation: dict[int, float] = field(default_factory=dict)  # n -> TCAM test CorLoc
    seconds: dict[str, float] = field(default_factory=dict)


def with_run(cfg: Config, root: Path, name: str, **sections) -> Config:
    """cfg writing to root/name, with sections replaced: a dict of keys, or a whole section object."""
    changes = {key: values if dataclasses.is_dataclass(values) else dataclasses.replace(getattr(cfg, key), **values)
               for key, values in sections.items()}
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, root=str(root), name=name), **changes)


def demo_dataset(cfg: Config, out: Path, say: Say) -> Config:
    root = out / "data"
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, root=str(root),
                                                               metadata=str(root / "metadata")))
    if metadata_folder(cfg.dataset).is_dir():
        say(f"dataset: reusing {root}")
    else:
        say(f"dataset: generating {root}")
        for line in generate(cfg.synth, root).lines():
            say(f"  {line}")
    return cfg


def trained_best(cfg: Config, stage: str, say: Say) -> Path:
    """Train (or finish training: run folders resume); the run's checkpoints folder."""
    result = run_training(cfg, stage, out=lambda line: say(f"    {line}"))
    if result.best_corloc is None:
        raise RuntimeError(f"{result.run_dir}: no best-corloc checkpoint (no val frame with a box?)")
    return result.run_dir / "checkpoints"


def cam_store(cfg: Config, checkpoint: Path, path: Path, say: Say) -> Path:
    if not path.exists():
        summary = fill_cam_store(cfg, checkpoint, path)
        say(f"    {summary.frames} frames, {summary.bytes_per_frame:.0f} bytes per frame")
    return path


def run_seed(cfg: Config, folder: Path, seed: int, say: Say) -> SeedRun:
    """Stage 1, the two stores, TCAM for every n, CoLo-CAM, then each method on the test split."""
    d = cfg.demo
    run = SeedRun(seed)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        run.seconds[step] = round(run.seconds.get(step, 0.0) + time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    say(f"[seed {seed}] stage 1: CAM classifier, validated with CAM and LayerCAM")
    cam_cfg = with_run(cfg, folder, "cam", train={"epochs": d.cam_epochs, "lr": d.cam_lr},
                       eval={"cam_methods": ["layercam"]})
    stage1 = trained_best(cam_cfg, "cam", say)
    run.checkpoints = {"CAM": stage1 / "best-corloc", "LayerCAM": stage1 / "best-corloc-layercam"}
    lap("stage 1")

    say(f"[seed {seed}] CAM stores of every training frame: CAM (for TCAM) and LayerCAM (for CoLo-CAM)")
    stores = {name: cam_store(with_run(cam_cfg, folder, "cams", cam={"method": CAM_METHOD[name]}),
                              run.checkpoints[name], folder / f"{CAM_METHOD[name]}s.parquet", say)
              for name in CAM_METHOD}
    lap("CAM stores")

    stage2 = {"TCAM": {}}
    for n in dict.fromkeys([cfg.tcam.n, *d.ablation]):
        say(f"[seed {seed}] stage 2: TCAM with n={n} neighbour frame(s) ({cfg.tcam.direction})")
        tcam_cfg = with_run(cfg, folder, f"tcam-n{n}", tcam={"n": n, "cams": str(stores["CAM"])},
                            train={"epochs": d.tcam_epochs, "lr": d.tcam_lr})
        stage2["TCAM"][n] = trained_best(tcam_cfg, "tcam", say) / "best-corloc"
        lap("TCAM" if n == cfg.tcam.n else "TCAM ablation")
    run.checkpoints["TCAM"] = stage2["TCAM"][cfg.tcam.n]
    say(f"[seed {seed}] stage 2: CoLo-CAM (clips of {d.colocam.clip} frames, colour CRF)")
    colocam_cfg = with_run(cfg, folder, "colocam", tcam=dataclasses.replace(d.colocam, cams=str(stores["LayerCAM"])),
                           train={"epochs": d.colocam_epochs, "lr": d.colocam_lr})
    run.checkpoints["CoLo-CAM"] = trained_best(colocam_cfg, "tcam", say) / "best-corloc"
    lap("CoLo-CAM")

    say(f"[seed {seed}] every method on the test split")
    for name, checkpoint in run.checkpoints.items():
        method_cfg = with_run(cfg, folder, "eval", cam={"method": CAM_METHOD.get(name, cfg.cam.method)})
        report = evaluate_checkpoint(checkpoint, method_cfg, "test", folder / f"eval-{name.lower()}")
        run.reports[name] = next(iter(report["stages"].values()))
    for n, checkpoint in stage2["TCAM"].items():
        report = evaluate_checkpoint(checkpoint, cfg, "test", folder / f"eval-tcam-n{n}")
        run.ablation[n] = report["stages"]["tcam"]["corloc"]
    lap("evaluation")
    return run


def run_demo(cfg: Config, out: str | Path, say: Say = print) -> dict:
    started = time.perf_counter()
    out = Path(out).resolve()
    cfg = demo_dataset(cfg, out, say)
    runs = [run_seed(cfg, out / f"seed-{k}", cfg.train.seed + k, say) for k in range(cfg.demo.seeds)]
    report = demo_report(cfg, runs, round(time.perf_counter() - started, 1))
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    say("comparison picture of the first seed's models")
    viz.write_png(out / "comparison.png", comparison_grid(runs[0], cfg, "test"))
    atomic_write_text(out / "summary.md", summary_markdown(report, cfg))
    return report


# --------------------------------------------------------------------------- the report


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single run)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def method_summary(reports: list[dict]) -> dict:
    """A method's test results over seeds: mean +- std of CorLoc, means of the rest, per-seed runs."""
    corloc_mean, corloc_std = mean_std([r["corloc"] for r in reports])
    classes = reports[0]["per_class"]
    return {"corloc_mean": corloc_mean, "corloc_std": corloc_std,
            **{f"{key}_mean": statistics.fmean(r[key] for r in reports) for key in SUMMARY_KEYS[1:]},
            "per_class_mean": {c: statistics.fmean(r["per_class"][c] for r in reports) for c in classes},
            "runs": [{key: r[key] for key in (*SUMMARY_KEYS, "best_threshold")} for r in reports]}


def stage_entry(summary: dict, method: str) -> dict:
    """A method's summary in the layout report readers know (stages.cam / stages.tcam): means."""
    return {"method": method, "corloc": summary["corloc_mean"], "corloc_std": summary["corloc_std"],
            "maxboxacc_v2": summary["maxboxacc_v2_mean"], "top1": summary["top1_mean"],
            "per_class": summary["per_class_mean"], "seeds": len(summary["runs"])}


def demo_report(cfg: Config, runs: list[SeedRun], runtime_s: float) -> dict:
    methods = {name: method_summary([run.reports[name] for run in runs]) for name in runs[0].reports}
    best_stage2 = max(STAGE2_METHODS, key=lambda name: methods[name]["corloc_mean"])
    margin = methods[best_stage2]["corloc_mean"] - methods["CAM"]["corloc_mean"]
    ablation = {str(n): mean_std([run.ablation[n] for run in runs]) for n in runs[0].ablation}
    return {
        "dataset": cfg.dataset.name, "split": "test", "seeds": [run.seed for run in runs],
        "methods": methods,
        "stages": {"cam": stage_entry(methods["CAM"], "CAM"), "tcam": stage_entry(methods[best_stage2], best_stage2)},
        "margin": {"method": best_stage2, "over_cam": margin,
                   "larger_std": max(methods[best_stage2]["corloc_std"], methods["CAM"]["corloc_std"])},
        "ablation_n": {n: mean for n, (mean, _) in ablation.items()},
        "ablation_n_std": {n: std for n, (_, std) in ablation.items()},
        "seconds_per_seed": [run.seconds for run in runs],
        "runtime_s": runtime_s,
    }


def summary_markdown(report: dict, cfg: Config) -> str:
    methods, seeds = report["methods"], len(report["seeds"])
    spread = f"mean +- std over {seeds} seeds" if seeds > 1 else "one seed"
    lines = [f"# tcam-ray demo: {report['dataset']}, {report['split']} split", "",
             f"CorLoc (% of frames whose box has IoU >= 0.5 with a ground-truth box; clovaai/wsolevaluation's "
             f"rule), {spread}. Each method at its best-CorLoc epoch on val; TCAM with n={cfg.tcam.n} "
             f"{cfg.tcam.direction}.", "",
             "| method | CorLoc | MaxBoxAccV2 | top-1 |", "| --- | ---: | ---: | ---: |"]
    for name, m in methods.items():
        lines.append(f"| {name} | {m['corloc_mean']:.1f} +- {m['corloc_std']:.1f} | {m['maxboxacc_v2_mean']:.1f} "
                     f"| {m['top1_mean']:.1f} |")
    margin = report["margin"]
    lines += ["", f"{margin['method']} over CAM: {margin['over_cam']:+.1f} points (larger std "
              f"{margin['larger_std']:.1f}).", "", "Per class (CorLoc, mean over seeds):", "",
              "| class | " + " | ".join(methods) + " |", "| --- |" + " ---: |" * len(methods)]
    for name in methods["CAM"]["per_class_mean"]:
        lines.append(f"| {name} | " + " | ".join(f"{m['per_class_mean'].get(name, float('nan')):.1f}"
                                                 for m in methods.values()) + " |")
    if len(report["ablation_n"]) > 1:
        lines += ["", "Temporal pooling ablation (TCAM CorLoc by number of neighbour frames n):", "",
                  "| n | CorLoc |", "| ---: | ---: |"]
        lines += [f"| {n} | {value:.1f} +- {report['ablation_n_std'][n]:.1f} |"
                  for n, value in report["ablation_n"].items()]
    seed_seconds = [sum(steps.values()) for steps in report["seconds_per_seed"]]
    slowest = report["seconds_per_seed"][seed_seconds.index(max(seed_seconds))]
    lines += ["", f"Runtime of this run: {report['runtime_s']:.0f} s; per seed "
              + ", ".join(f"{seconds:.0f} s" for seconds in seed_seconds)
              + " (steps reused from an earlier run cost only their start); the slowest seed: "
              + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in slowest.items()) + ".", "",
              "Pictures: `comparison.png` (test frames of the first seed: frame + GT, then each method's map and "
              "box), `seed-*/*/curves.png` (training curves), `seed-*/eval-*/corloc_threshold.png`.", ""]
    return "\n".join(lines)


def comparison_grid(run: SeedRun, cfg: Config, split: str) -> np.ndarray:
    """Test frames as [frame + GT | each method's map with its box at its best threshold]."""
    device = torch.device("cpu")
    index = index_dataset(cfg.dataset)
    targets = EvalTargets(split_rows(index.table, split))
    panels = {}
    for name, checkpoint in run.checkpoints.items():
        method_cfg = dataclasses.replace(cfg, cam=dataclasses.replace(cfg.cam, method=CAM_METHOD.get(name, "cam")))
        predict, _, trained = load_predictor(checkpoint, device, method_cfg)
        run_cfg = dataclasses.replace(cfg, input=dataclasses.replace(trained.input, batch_size=GRID_FRAMES))
        batch = next(iter(LocalContext(run_cfg, index.table).eval_batches(split)))
        maps, _ = predict(normalise(batch[IMAGE], trained.input.mean, trained.input.std), batch[LABEL])
        boxes, sizes = targets.lookup(batch[ROW])
        threshold = run.reports[name]["best_threshold"]
        panels[name] = [method_panel(image, cam, frame_boxes, size, threshold, cfg.eval.protocol)
                        for image, cam, frame_boxes, size in zip(batch[IMAGE].numpy(), maps.numpy(), boxes, sizes)]
    rows = []
    for per_method in zip(*panels.values()):  # one frame: each method's [frame + GT | map] panel
        side = per_method[0].shape[1] // 2
        rows.append(np.concatenate([per_method[0][:, :side], *(panel[:, side:] for panel in per_method)], axis=1))
    captions = ["frame + GT | " + " | ".join(panels)] + [""] * (len(rows) - 1)
    return viz.grid(rows, columns=1, cell=(rows[0].shape[1] * 2, rows[0].shape[0] * 2), captions=captions)


def method_panel(image: np.ndarray, cam: np.ndarray, boxes, size, threshold: float, protocol: str) -> np.ndarray:
    """[frame + GT | map + GT + predicted box] at model resolution."""
    side = image.shape[0]
    width, height = size
    gt = [np.asarray(b) * [side / width, side / height, side / width, side / height] for b in boxes]
    return viz.map_panel(image, cam, gt, predict_boxes(cam, threshold, (side, side), protocol))
