from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tcam_ray.config import dump_config
from tcam_ray.io import atomic_write_text

from .common import (CliError, ConfigOption, SetOption, exit_if_any_failed, load_config, print_video_outcome,
                     progress_bar)

if TYPE_CHECKING:
    from tcam_ray.video.localize import Localizer, LocalizeSummary

LOCAL = "local"


def localize(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder of either stage (e.g. RUN/checkpoints/best-corloc).",
                                               show_default=False)],
    videos: Annotated[list[str], typer.Argument(help="Video files (mp4, avi, mkv, ...), folders (the videos in them) "
                                                     "or quoted glob patterns ('clips/**/*.mp4').", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one sub-folder per video.", show_default=False)],
    class_name: Annotated[Optional[str], typer.Option("--class", help="Stage 1: draw the CAM of this class instead of "
                                                                      "the predicted one (and label frames with it).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Map threshold for the boxes (video.threshold); default: "
                                                            "the checkpoint's best on val if recorded, else 0.5.")] = None,
    min_presence: Annotated[Optional[float], typer.Option(help="No box on frames whose presence (the model's "
                                                                 "confidence that the object is there, 0-1) is "
                                                                 "below this (video.min_presence; 0: never).")] = None,
    smooth: Annotated[Optional[bool], typer.Option("--smooth/--no-smooth", help="Smooth boxes along each shot "
                                                   "(video.smooth; on by default).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Frames per model forward (video.batch_size).")] = None,
    max_frames: Annotated[Optional[int], typer.Option(help="Only the first N frames of each video (video.max_frames).")] = None,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--cpu", help="Run the model on the GPU (scale.use_gpu).",
                                                show_default=False)] = None,
    address: Annotated[Optional[str], typer.Option(help="Spread the videos over the Ray cluster at this address with "
                                                        "Ray Data ('local': start a local Ray). Default: RAY_ADDRESS if "
                                                        "set, else all in this process.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Localize the object in every frame of video files with a checkpoint of either stage.

    Per video, OUT/NAME/ gets annotated.mp4 (H.264 that browsers play: heat map, box and label on every frame, each at the input frame's time), boxes.csv and boxes.json (per frame: its time, presence, the box in the video's pixels smoothed along the shot or none where the object is judged absent, the frame's own box, score = mean map value inside the box, the threshold used) and contact_sheet.png.

    A video that cannot be read is reported and skipped; the exit code is 1 if any failed.
    """
    from tcam_ray.video.localize import localize_in_process, plan_jobs
    from tcam_ray.video.reader import VideoError, count_frames, expand_inputs

    ray_address = None if address == LOCAL else address
    cfg = load_config(config, set_, **{"video.threshold": threshold, "video.batch_size": batch_size,
                                       "video.min_presence": min_presence, "video.smooth": smooth,
                                       "video.max_frames": max_frames, "scale.use_gpu": gpu,
                                       "scale.address": ray_address})
    use_ray = address is not None or bool(os.environ.get("RAY_ADDRESS"))
    localizer = load_localizer(checkpoint, cfg, class_name)  # a bad checkpoint or class fails here, before Ray
    paths, input_errors = expand_inputs(videos)
    jobs = plan_jobs(paths, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    with progress_bar("localizing frames", total=count_frames(paths, cfg.video.max_frames)) as (advance, _):
        if use_ray:
            from tcam_ray.video.distributed import localize_on_ray

            def on_video_ray(outcome):
                show(outcome)
                if not isinstance(outcome, VideoError):
                    advance(outcome.frames)
            summary = localize_on_ray(jobs, checkpoint, cfg, class_name, on_video=on_video_ray)
        else:
            summary = localize_in_process(localizer, jobs, advance, show)
    summary.failures = input_errors + summary.failures
    write_summary(out, checkpoint, summary)
    report(summary, out)


def load_localizer(checkpoint: Path, cfg, class_name: str | None) -> Localizer:
    from tcam_ray.video.localize import Localizer

    try:
        return Localizer(checkpoint, cfg, class_name)
    except FileNotFoundError as err:
        raise CliError(str(err)) from None


def show(outcome) -> None:
    print_video_outcome(outcome, lambda done: f"{done.source} -> {done.out_dir} ({done.frames} frames, "
                                              f"{done.frames_per_second:.1f} frames/s)")


def write_summary(out: Path, checkpoint: Path, summary: LocalizeSummary) -> None:
    data = {"checkpoint": str(checkpoint.resolve()),
            "videos": [{**vars(v), "frames_per_second": round(v.frames_per_second, 2)} for v in summary.done],
            "failures": [{"path": e.path, "error": e.reason} for e in summary.failures]}
    atomic_write_text(out / "summary.json", json.dumps(data, indent=1))


def report(summary: LocalizeSummary, out: Path) -> None:
    total = len(summary.done) + len(summary.failures)
    frames = sum(v.frames for v in summary.done)
    typer.echo(f"localized {len(summary.done)} of {total} videos into {out} ({frames} frames)")
    for video in summary.done:
        typer.echo(f"  ok     {video.source} -> {video.out_dir}: {video.frames} frames {video.width}x{video.height}, "
                   f"a box in {video.frames_with_box}, threshold {video.threshold:.2f}, "
                   f"{video.frames_per_second:.1f} frames/s")
    exit_if_any_failed(summary.failures, total, "see above; summary.json lists them")
