from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from tcam_ray.config import SynthConfig, dump_config
from tcam_ray.io import atomic_write_text

from .common import CliError, ConfigOption, SetOption, load_config, progress_bar


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into (frames, metadata/, preview.png).")],
    classes: Annotated[Optional[int], typer.Option(help="Number of object classes (1-12). Default: " + str(SynthConfig.classes))] = None,
    videos: Annotated[Optional[int], typer.Option(help="Training videos per class. Default: " + str(SynthConfig.videos))] = None,
    shots: Annotated[Optional[int], typer.Option(help="Shots per video. Default: " + str(SynthConfig.shots))] = None,
    frames: Annotated[Optional[int], typer.Option(help="Frames per shot. Default: " + str(SynthConfig.frames))] = None,
    size: Annotated[Optional[int], typer.Option(help="Frame height in pixels; width = size x synth.aspect (4/3). Default: " + str(SynthConfig.size))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: same seed, same bytes. Default: " + str(SynthConfig.seed))] = None,
    overwrite: Annotated[bool, typer.Option(help="Delete and replace the dataset already in OUT.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Generate a synthetic tagged-video dataset in the YouTube-Objects layout.

    Each class's object is a large body that looks alike across classes plus a small class-specific part that moves over it, so a classifier's CAM covers only part of the object. Objects and camera move, scale and turn; shots have clutter, moving distractors, occluders and objects leaving the frame.

    Train lists shots (tag only); val/test list every synth.eval_stride-th frame with the boxes of every visible object.

    More knobs with --set synth.KEY=VALUE: val_videos, test_videos, aspect, eval_stride, second_object_prob, occluder_prob, leave_frame_prob, distractors, backgrounds, jpeg_quality (`tcam-ray config` prints them all).
    """
    from tcam_ray.data.synthetic import generate, video_plan, write_preview

    cfg = load_config(config, set_, **{
        "synth.classes": classes, "synth.videos": videos, "synth.shots": shots,
        "synth.frames": frames, "synth.size": size, "synth.seed": seed,
    })
    if (out / "metadata").exists():
        if not overwrite:
            raise CliError(f"{out} already holds a dataset (metadata/ exists); "
                           "pass --overwrite to replace it, or pick another folder")
        shutil.rmtree(out)
    with progress_bar("rendering videos", total=len(video_plan(cfg.synth))) as (advance, _):
        summary = generate(cfg.synth, out, progress=advance)
    atomic_write_text(out / "synth-config.yaml", dump_config(cfg.synth))
    preview = write_preview(out, out / "preview.png")
    for line in summary.lines():
        typer.echo(line)
    typer.echo(f"preview: {preview}")
