"""The whole chain on a synthetic dataset: synth -> stage 1 -> CAM store -> stage 2 (and the
n ablation) -> evaluation on the test split -> report (JSON, Markdown, pictures).

Every step writes its own run folder under the demo folder; a step whose output is already
there is reused, so an interrupted demo picks up where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import viz
from .config import Config
from .data import index_dataset, metadata_folder
from .data.frames import IMAGE, LABEL, ROW
from .data.pipeline import split_rows
from .data.tensors import normalise
from .data.synthetic import generate
from .evaluation.boxes import predict_boxes
from .io import atomic_write_text
from .train.cams import fill_cam_store
from .train.context import LocalContext
from .train.evaluate import evaluate_checkpoint, load_predictor
from .train.runner import EvalTargets
from .train.trainer import run_training

Say = Callable[[str], None]
GRID_FRAMES = 8


def with_run(cfg: Config, root: Path, name: str, **sections) -> Config:
    changes = {key: dataclasses.replace(getattr(cfg, key), **values) for key, values in sections.items()}
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, root=str(root), name=name), **changes)


def demo_dataset(cfg: Config, out: Path, say: Say) -> Config:
    root = out / "data"
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, root=str(root),
                                                               metadata=str(root / "metadata")))
    if metadata_folder(cfg.dataset).is_dir():
        say(f"[1/5] dataset: reusing {root}")
    else:
        say(f"[1/5] dataset: generating {root}")
        summary = generate(cfg.synth, root)
        for line in summary.lines():
            say(f"      {line}")
    return cfg


def best_checkpoint(cfg: Config, stage: str, say: Say, selection: str = "best-corloc") -> Path:
    """Train (or finish training: run folders resume) and return its best checkpoint by `selection`."""
    result = run_training(cfg, stage, out=lambda line: say(f"      {line}"))
    best = result.best_corloc if selection == "best-corloc" else result.best_top1
    if best is None:
        raise RuntimeError(f"{result.run_dir}: no {selection} checkpoint")
    return best


def run_demo(cfg: Config, out: str | Path, say: Say = print) -> dict:
    started = time.perf_counter()
    out = Path(out).resolve()
    cfg = demo_dataset(cfg, out, say)

    say("[2/5] stage 1: CAM classifier")
    cam_cfg = with_run(cfg, out, "cam", train={"epochs": cfg.demo.cam_epochs, "lr": cfg.demo.cam_lr})
    cam_best = best_checkpoint(cam_cfg, "cam", say, cfg.demo.cam_checkpoint)

    store = out / "cams.parquet"
    say(f"[3/5] CAM store ({cfg.cam.method}) of every training frame")
    if not store.exists():
        summary = fill_cam_store(cam_cfg, cam_best, store)
        say(f"      {summary.frames} frames, {summary.bytes_per_frame:.0f} bytes per frame")

    main_n = cfg.tcam.n
    tcam_best = {}
    for n in dict.fromkeys([main_n, *cfg.demo.ablation]):
        say(f"[4/5] stage 2: TCAM with n={n} neighbour frame(s) ({cfg.tcam.direction})")
        tcam_cfg = with_run(cfg, out, f"tcam-n{n}", tcam={"n": n, "cams": str(store)},
                            train={"epochs": cfg.demo.tcam_epochs, "lr": cfg.demo.tcam_lr})
        tcam_best[n] = best_checkpoint(tcam_cfg, "tcam", say)

    say("[5/5] evaluation on the test split")
    cam_report = evaluate_checkpoint(cam_best, cfg, "test", out / "eval-cam")
    tcam_reports = {n: evaluate_checkpoint(best, cfg, "test", out / f"eval-tcam-n{n}") for n, best in tcam_best.items()}
    report = {
        "dataset": cfg.dataset.name, "split": "test",
        "stages": {"cam": cam_report["stages"]["cam"], "tcam": tcam_reports[main_n]["stages"]["tcam"]},
        "ablation_n": {str(n): r["stages"]["tcam"]["corloc"] for n, r in sorted(tcam_reports.items())},
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    thresholds = (report["stages"]["cam"]["best_threshold"], report["stages"]["tcam"]["best_threshold"])
    viz.write_png(out / "comparison.png", comparison_grid(cam_best, tcam_best[main_n], thresholds, cfg, "test"))
    atomic_write_text(out / "summary.md", summary_markdown(report, main_n, cfg))
    return report


def comparison_grid(cam_checkpoint: Path, tcam_checkpoint: Path, thresholds: tuple[float, float], cfg: Config,
                    split: str) -> np.ndarray:
    """Test frames as [frame + GT | CAM + its box | TCAM + its box] at each model's best threshold."""
    device = torch.device("cpu")
    cam_predict, _, trained = load_predictor(cam_checkpoint, device, cfg)
    tcam_predict, _, _ = load_predictor(tcam_checkpoint, device, cfg)
    cam_threshold, tcam_threshold = thresholds
    index = index_dataset(cfg.dataset)
    targets = EvalTargets(split_rows(index.table, split))
    run_cfg = dataclasses.replace(cfg, input=dataclasses.replace(trained.input, batch_size=GRID_FRAMES))
    batch = next(iter(LocalContext(run_cfg, index.table).eval_batches(split)))
    images = normalise(batch[IMAGE], trained.input.mean, trained.input.std)
    cam_maps, _ = cam_predict(images, batch[LABEL])
    tcam_maps, _ = tcam_predict(images, batch[LABEL])
    boxes, sizes = targets.lookup(batch[ROW])
    rows = []
    for image, cam, tcam, frame_boxes, (width, height) in zip(batch[IMAGE].numpy(), cam_maps.numpy(),
                                                              tcam_maps.numpy(), boxes, sizes):
        side = image.shape[0]
        gt = [np.asarray(b) * [side / width, side / height, side / width, side / height] for b in frame_boxes]
        cam_panel = viz.map_panel(image, cam, gt, predict_boxes(cam, cam_threshold, (side, side), cfg.eval.protocol))
        tcam_panel = viz.map_panel(image, tcam, gt, predict_boxes(tcam, tcam_threshold, (side, side), cfg.eval.protocol))
        rows.append(np.concatenate([cam_panel, tcam_panel[:, side:]], axis=1))
    captions = ["frame + GT | CAM | TCAM"] + [""] * (len(rows) - 1)
    return viz.grid(rows, columns=2, cell=(rows[0].shape[1] * 2, rows[0].shape[0] * 2), captions=captions)


def summary_markdown(report: dict, main_n: int, cfg: Config) -> str:
    cam, tcam = report["stages"]["cam"], report["stages"]["tcam"]
    lines = [f"# tcam-ray demo: {report['dataset']}, {report['split']} split", "",
             f"CorLoc (% of frames whose box has IoU >= 0.5 with a ground-truth box), TCAM with n={main_n} "
             f"{cfg.tcam.direction}.", "",
             "| | CAM | TCAM |", "| --- | ---: | ---: |",
             f"| CorLoc | {cam['corloc']:.1f} | {tcam['corloc']:.1f} |",
             f"| MaxBoxAccV2 | {cam['maxboxacc_v2']:.1f} | {tcam['maxboxacc_v2']:.1f} |",
             f"| top-1 | {cam['top1']:.1f} | {tcam['top1']:.1f} |"]
    for name in cam["per_class"]:
        lines.append(f"| CorLoc {name} | {cam['per_class'][name]:.1f} | {tcam['per_class'].get(name, float('nan')):.1f} |")
    lines += ["", "Temporal pooling ablation (TCAM CorLoc by number of neighbour frames n):", "",
              "| n | CorLoc |", "| ---: | ---: |"]
    lines += [f"| {n} | {value:.1f} |" for n, value in report["ablation_n"].items()]
    lines += ["", f"Runtime: {report['runtime_s']:.0f} s.", "",
              "Pictures: `comparison.png` (test frames: frame + GT, CAM, TCAM with their boxes), "
              "`cam/curves.png` and `tcam-n*/curves.png` (training curves), `eval-*/corloc_threshold.png`.", ""]
    return "\n".join(lines)
