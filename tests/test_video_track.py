"""The box smoother (tcam_ray/video/track.py) on synthetic box tracks, its candidates from maps, and
the H.264 writer. Localizing real videos with it is in test_video.py."""
from __future__ import annotations

import av
import numpy as np
import pytest

from tcam_ray.video.localize import largest_boxes
from tcam_ray.video.track import fidelity, grid_candidates, jitter, map_candidates, pairwise_iou, smooth_track
from tcam_ray.video.writer import H264Writer, coded_size

FRAME = (320, 240)
BOX = np.array([0, 0, 60, 45], np.float64)
FPS = 25.0


def moving_box(t: np.ndarray, start: float) -> np.ndarray:
    """(T, 4) a 60x45 box moving right 2 px a frame from x = start."""
    x = start + 2.0 * t
    return BOX + np.stack([x, np.full_like(x, 80), x, np.full_like(x, 80)], axis=1)


def jittery_candidates(truth: np.ndarray, seed: int = 0, outlier_every: int = 6):
    """Per frame 3 candidates, noisy copies of the true box (sd 5 px per edge); candidate 0, the frame's
    own box, jumps to a distractor across the frame on every `outlier_every`-th frame."""
    rng = np.random.default_rng(seed)
    candidates = truth[:, None] + rng.normal(0, 5, (len(truth), 3, 4))
    outliers = np.arange(outlier_every - 1, len(truth), outlier_every)
    candidates[outliers, 0] = [250, 150, 300, 200]
    return candidates, outliers


def smooth(candidates, times, shots, valid=None, weight=1.0, sigma_s=0.1):
    """(chosen, boxes) with fidelity scores and localize's defaults."""
    valid = np.ones(candidates.shape[:2], bool) if valid is None else valid
    return smooth_track(candidates, fidelity(candidates, valid), times, shots, weight, 0.5, sigma_s)


def iou_with(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return pairwise_iou(boxes[:, None], truth[:, None])[:, 0, 0]


def test_a_jittery_track_with_outliers_is_smoothed_and_its_hits_kept():
    t = np.arange(46)  # outliers at 5, 11, ..., 41: each with neighbours on both sides to tell it
    truth = moving_box(t, 20)
    candidates, outliers = jittery_candidates(truth)
    shots, found = [(0, 46)], np.ones(46, bool)
    raw = candidates[:, 0]
    chosen, smoothed = smooth(candidates, t / FPS, shots)
    assert (chosen[outliers] != 0).all()  # the track leaves the frame's own box where it jumps away
    before, after = jitter(raw, found, shots, FRAME), jitter(smoothed, found, shots, FRAME)
    assert after["one_minus_iou"] < 0.4 * before["one_minus_iou"]
    assert after["centre_shift"] < 0.4 * before["centre_shift"]
    assert (iou_with(raw[outliers], truth[outliers]) == 0).all()
    assert (iou_with(smoothed, truth) >= 0.7).all()  # on the object, outlier frames included


def test_a_true_jump_at_a_cut_is_kept_and_absent_frames_stay_empty():
    t = np.arange(40)
    truth = np.r_[moving_box(t[:20], 10), moving_box(t[20:] - 20, 200)]  # the next shot starts elsewhere
    candidates, _ = jittery_candidates(truth, seed=1, outlier_every=1000)
    valid = np.ones((40, 3), bool)
    valid[30:33] = False  # the object judged absent: a gap
    chosen, boxes = smooth(candidates, t / FPS, [(0, 20), (20, 40)], valid)
    assert (chosen[30:33] == -1).all() and (chosen[:30] >= 0).all() and (chosen[33:] >= 0).all()
    assert (boxes[30:33] == 0).all()
    kept = np.r_[0:30, 33:40]
    assert (iou_with(boxes[kept], truth[kept]) >= 0.7).all()  # frames 19 and 20 included
    _, blended = smooth(candidates, t / FPS, [(0, 40)], valid)
    assert (iou_with(blended[19:21], truth[19:21]) < 0.5).all()  # what the cut prevents


def test_weight_zero_keeps_each_frames_own_box_and_time_apart_frames_hardly_constrain():
    candidates, outliers = jittery_candidates(moving_box(np.arange(24), 20))
    shots = [(0, 24)]
    chosen, boxes = smooth(candidates, np.arange(24) / FPS, shots, weight=0.0, sigma_s=0.0)
    assert (chosen == 0).all() and (boxes == candidates[:, 0]).all()
    # Frames 5 s apart (a time-lapse, or a variable frame rate's long gap) neither pull each other's
    # box nor average with each other.
    chosen, boxes = smooth(candidates, np.arange(24) * 5.0, shots)
    assert (chosen[outliers] == 0).all() and np.allclose(boxes, candidates[:, 0])


def test_candidates_start_with_the_evaluations_box_and_score_their_fidelity_to_it():
    maps = np.zeros((3, 28, 28), np.float32)
    maps[0, 4:12, 5:20] = 1.0  # the larger blob: the evaluation's box
    maps[0, 18:24, 2:8] = 0.9
    maps[1, 10:16, 10:16] = np.linspace(0.2, 1, 6)[None]
    boxes, valid = map_candidates(maps, 0.5, "wsol")
    assert (boxes[:, 0] == largest_boxes(maps, 0.5)).all()
    assert valid[0, :2].all() and valid[1, 0] and not valid[2].any()  # a blank map has no candidate
    assert len(grid_candidates(maps[0], 0.5, "wsol")) >= valid[0].sum()
    for frame_boxes, frame_valid in zip(boxes, valid):
        assert len(np.unique(frame_boxes[frame_valid], axis=0)) == frame_valid.sum()  # no two alike
    scores = fidelity(boxes, valid)
    assert scores[0, 0] == 1 and scores[0, 1] == 0 and np.isneginf(scores[2]).all()  # the other blob: IoU 0
    assert (scores[1, 1:][valid[1, 1:]] < 1).all()  # thresholds +-0.1 give other boxes of the ramp


def read_h264(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(float(f.pts * stream.time_base), f.width, f.height) for f in container.decode(stream)]
        return stream.codec_context.name, stream.pix_fmt, frames


@pytest.mark.parametrize("size", [(64, 48), (63, 47)])
def test_h264_keeps_each_frames_time_and_pads_odd_sizes(tmp_path, size):
    times = [0.0, 0.04, 0.1, 0.5, 0.52, 1.7]  # a variable frame rate
    writer = H264Writer(tmp_path / "out.mp4", size, 25.0)
    for i, time_s in enumerate(times):
        writer.write(np.full((size[1], size[0], 3), 40 * i, np.uint8), time_s)
    writer.close()
    codec, pix_fmt, frames = read_h264(tmp_path / "out.mp4")
    assert codec == "h264" and pix_fmt == "yuv420p" and coded_size(size) == (64, 48)
    assert [f[1:] for f in frames] == [(64, 48)] * len(times)
    assert [f[0] for f in frames] == pytest.approx(times, abs=1e-4)
    data = (tmp_path / "out.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: the index first, so it streams
