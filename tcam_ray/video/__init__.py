"""Video files in: decode and probe them (reader), find their shots (scenes), turn tagged ones
into the dataset layout (ingest), and localize a checkpoint's object in every frame (localize,
its boxes smoothed along each shot by track, its annotated videos written as H.264 by writer;
spread over a Ray cluster by distributed, the only module here that imports Ray)."""
from __future__ import annotations

from .reader import VideoError, VideoInfo, VideoReader, expand_inputs, probe

__all__ = ["VideoError", "VideoInfo", "VideoReader", "expand_inputs", "probe"]
