from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .common import (CliError, ConfigOption, SetOption, exit_if_any_failed, load_config, print_video_outcome,
                     progress_bar)

if TYPE_CHECKING:
    from tcam_ray.video.ingest import IngestSummary


def ingest(
    inputs: Annotated[list[str], typer.Argument(metavar="[VIDEOS]... OUT",
                                                help="Video files, folders (their videos) or quoted glob patterns, "
                                                     "then OUT: the dataset root, created or appended to.",
                                                show_default=False)],
    tag: Annotated[Optional[str], typer.Option(help="The class of every video given.")] = None,
    tags: Annotated[Optional[Path], typer.Option(help="CSV of 'video,class[,split]' rows (paths relative to the file) "
                                                      "instead of VIDEOS and --tag.")] = None,
    split: Annotated[str, typer.Option(help="Split of the videos (train lists shots; val/test list frames, no boxes).")] = "train",
    fps: Annotated[Optional[float], typer.Option(help="Keep frames at this rate (video.fps); default every frame.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(help="Only the first N frames of each video (video.max_frames).")] = None,
    max_side: Annotated[Optional[int], typer.Option(help="Downscale frames whose longer side exceeds this (video.max_side).")] = None,
    new_classes: Annotated[bool, typer.Option("--new-classes/--no-new-classes",
                                              help="Allow tags that are not yet classes of the dataset; with "
                                                   "--no-new-classes such a tag is an 'unknown tag' error.")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Tagged video files into a dataset in the YouTube-Objects layout (frames as JPEG, one folder per shot).

    Shots come from a scene-cut detector on frame differences (video.cut_* keys). Appends to an existing dataset: its classes keep their ids, nothing is overwritten (a video whose name is already in its class is an error).

    A video that cannot be read is reported and skipped; the exit code is 1 if any failed. Then: `tcam-ray index --root OUT`, `tcam-ray train`.
    """
    from tcam_ray.data.layout import SPLITS
    from tcam_ray.video.ingest import ingest_videos
    from tcam_ray.video.reader import VideoError, count_frames

    cfg = load_config(config, set_, **{"video.fps": fps, "video.max_frames": max_frames, "video.max_side": max_side})
    if split not in SPLITS:
        raise CliError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    out, items, errors = parse_inputs(inputs, tag, tags, split)
    total = count_frames([item.path for item in items], cfg.video.max_frames)
    with progress_bar("ingesting frames", total=total) as (advance, _):
        try:
            summary = ingest_videos(items, out, cfg.video, new_classes, progress=advance, on_video=show)
        except VideoError as err:
            raise CliError(str(err)) from None
    summary.failures = errors + summary.failures
    report(summary)


def parse_inputs(inputs: list[str], tag: str | None, tags: Path | None, split: str):
    """(dataset root, videos to ingest, errors found in the inputs)."""
    from tcam_ray.video.ingest import IngestItem, read_tags_file
    from tcam_ray.video.reader import VideoError, expand_inputs

    if not inputs:
        raise CliError("name the dataset folder OUT (after the videos)")
    *videos, out = inputs
    if (tag is None) == (tags is None):
        raise CliError("give either --tag CLASS with video files, or --tags FILE.csv")
    if tags is not None:
        if videos:
            raise CliError(f"--tags lists the videos: drop {' '.join(videos)} (or use --tag)")
        try:
            items, errors = read_tags_file(tags, split)
        except VideoError as err:
            raise CliError(str(err)) from None
        return Path(out), items, errors
    if not videos:
        raise CliError("name the video files before OUT (or use --tags FILE.csv)")
    paths, errors = expand_inputs(videos)
    return Path(out), [IngestItem(p, tag, split) for p in paths], errors


def show(outcome) -> None:
    print_video_outcome(outcome, lambda done: f"{done.source} -> {done.tag}/data/{done.name}: {len(done.shots)} "
                                              f"shots, {done.frames_kept} frames")


def report(summary: IngestSummary) -> None:
    total = len(summary.done) + len(summary.failures)
    typer.echo(f"ingested {len(summary.done)} of {total} videos into {summary.root}")
    for video in summary.done:
        typer.echo(f"  ok     {video.source} -> {video.tag}/data/{video.name} ({video.split}): "
                   f"{len(video.shots)} shots, {video.frames_kept} of {video.frames_read} frames "
                   f"at {video.kept_fps:.2f} fps, cuts at {video.cuts or 'none'}")
    classes = ", ".join(f"{name} ({label})" for name, label in sorted(summary.classes.items(), key=lambda kv: kv[1]))
    typer.echo(f"classes: {classes or 'none'}")
    exit_if_any_failed(summary.failures, total)
    typer.echo(f"next: tcam-ray index --root {summary.root}")
