"""`tcam-ray bench KIND`: one JSON object per case per line on stdout, progress on stderr."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tcam_ray.config import Config

from .common import CliError, ConfigOption, SetOption, load_config


def crf_cases(cfg: Config, repeats: int, threads: Optional[int]):
    from tcam_ray.bench.crf import run_crf_bench

    return run_crf_bench(repeats=repeats, threads=threads)


def data_cases(cfg: Config, repeats: int, threads: Optional[int]):
    from tcam_ray.bench.data import run_data_bench

    return run_data_bench(cfg, repeats)


def train_cases(cfg: Config, repeats: int, threads: Optional[int]):
    from tcam_ray.bench.train import run_train_bench

    return run_train_bench(cfg, repeats)


def store_cases(cfg: Config, repeats: int, threads: Optional[int]):
    from tcam_ray.bench.store import run_store_bench

    return run_store_bench(cfg)


def seeds_cases(cfg: Config, repeats: int, threads: Optional[int]):
    from tcam_ray.bench.seeds import run_seeds_bench

    return run_seeds_bench(repeats)


def scale_cases(cfg: Config, repeats: int, threads: Optional[int]):
    from tcam_ray.bench.scale import run_scale_bench

    return run_scale_bench(cfg, repeats)


def track_cases(cfg: Config, checkpoint: Optional[Path], split: str, plot: Optional[Path] = None):
    from tcam_ray.bench.track import run_track_bench

    if checkpoint is None:
        raise CliError("bench track needs --checkpoint CKPT (a checkpoint folder of either stage)")
    if not checkpoint.is_dir():
        raise CliError(f"--checkpoint {checkpoint}: no such checkpoint folder")
    return run_track_bench(cfg, checkpoint, split, plot)


BENCHES = {"crf": crf_cases, "data": data_cases, "train": train_cases, "scale": scale_cases, "store": store_cases,
           "seeds": seeds_cases, "track": track_cases}


def bench(
    kind: Annotated[str, typer.Argument(help=f"What to measure: one of {', '.join(BENCHES)}.")],
    repeats: Annotated[int, typer.Option(help="Timed calls (crf) or passes/epochs (data, train) per case.")] = 3,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for crf (default: torch's).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="track: the checkpoint to localize with.")] = None,
    split: Annotated[str, typer.Option(help="track: the split whose shots are localized.")] = "test",
    plot: Annotated[Optional[Path], typer.Option(help="track: a PNG of the shot whose own boxes jitter most, with "
                                                      "its own and smoothed boxes.", show_default=False)] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Benchmark KIND against its baseline measured in the same run; prints one JSON line per case.

    crf: CRF loss forward+backward vs the reference's per-channel strategy. data: Ray Data pipeline vs a torch DataLoader. train: one-worker Ray Train step throughput vs the same loop in-process. scale: stage 1 and stage 2 training samples/s at 1, 2, 4, ... workers up to the cluster's CPUs (GPUs with scale.use_gpu), with scaling efficiency against the one-worker figure. store: CAM store bytes per frame vs one float32 full-size map per frame. seeds: the stage-2 pseudo-label step (the compiled seed sampler on the CPU) vs a per-frame NumPy/OpenCV reference. track: a checkpoint's boxes along each shot of --split, smoothed (video.smooth) vs each frame's own box: CorLoc at its threshold and frame-to-frame jitter, with and without video.min_presence. data/train/scale/store run on the config's dataset, or generate the synthetic one when it is absent.
    """
    if kind not in BENCHES:
        raise CliError(f"unknown bench kind {kind!r}; known kinds: {', '.join(BENCHES)}")
    cfg = load_config(config, set_)
    cases = track_cases(cfg, checkpoint, split, plot) if kind == "track" else BENCHES[kind](cfg, repeats, threads)
    for record in cases:
        print(json.dumps(record), flush=True)
