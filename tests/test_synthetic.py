"""The synthetic tagged-video generator: layout, determinism, and the properties that make it hard."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tcam_ray.config import DatasetConfig, SynthConfig
from tcam_ray.data import index_dataset, read_metadata
from tcam_ray.data.synthetic import PATCH, class_names, generate, make_track

SMALL = SynthConfig(classes=3, videos=2, shots=2, frames=12, size=64, eval_stride=2)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    summary = generate(SMALL, root)
    return root, summary


def test_layout_is_read_and_indexed_like_any_dataset(small):
    root, summary = small
    index = index_dataset(DatasetConfig(name="synthetic", root=str(root)))
    counts = index.counts()
    assert counts["train"] == summary.frames["train"] == 3 * 2 * 2 * 12
    assert counts["val"] == summary.listed["val"] and counts["test"] == summary.listed["test"]
    assert index.info.classes == class_names(3) == ["red_star", "blue_triangle", "green_disc"]
    widths = set(index.table["width"].to_pylist())
    heights = set(index.table["height"].to_pylist())
    assert widths == {86} and heights == {64}  # 4:3 frames
    shot = index.split("train").slice(0, 12).to_pylist()
    assert [r["frame_idx"] for r in shot] == list(range(12))
    assert len({r["shot_id"] for r in shot}) == 1


def test_eval_frames_carry_boxes_inside_the_frame(small):
    root, summary = small
    meta = read_metadata(root / "metadata")
    for split in ("val", "test"):
        frames = meta.splits[split]
        assert frames.ids, f"no {split} frames listed"
        for frame_id in frames.ids:
            assert frames.boxes[frame_id], frame_id
            width, height = frames.sizes[frame_id]
            for x0, y0, x1, y1 in frames.boxes[frame_id]:
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert summary.boxes == sum(len(meta.splits[s].boxes[i]) for s in ("val", "test") for i in meta.splits[s].ids)


def test_boxes_enclose_the_object_not_the_background(small):
    """Every object carries a saturated part, and the background and distractors are
    desaturated: the saturated pixels of a test frame must lie inside its boxes."""
    root, _ = small
    meta = read_metadata(root / "metadata")
    test = meta.splits["test"]
    hits = 0
    for frame_id in test.ids:
        image = cv2.imread(str(root / frame_id))
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        inside = np.zeros(image.shape[:2], bool)
        for x0, y0, x1, y1 in test.boxes[frame_id]:
            inside[int(y0):int(math.ceil(y1)), int(x0):int(math.ceil(x1))] = True
        saturated = hsv[..., 1] > 190
        if saturated.sum() >= 4:
            hits += saturated[inside].sum() / saturated.sum() > 0.6
    assert hits >= 0.8 * len(test.ids)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = SynthConfig(classes=2, videos=1, val_videos=0, test_videos=1, shots=1, frames=6, size=48, eval_stride=1)
    generate(cfg, tmp_path / "a")
    generate(cfg, tmp_path / "b")
    generate(SynthConfig(**{**cfg.__dict__, "seed": 1}), tmp_path / "c")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_the_problem_is_not_trivial(tmp_path):
    summary = generate(SynthConfig(classes=4, videos=1, shots=2, frames=16, size=64, eval_stride=1), tmp_path)
    assert 0.05 < summary.mean_box_area_fraction < 0.45
    assert 0.04 < summary.mean_part_fraction < 0.25  # the discriminative part is a small piece of the object
    assert summary.clipped_fraction > 0.05  # objects run past the border
    assert summary.occluded_fraction > 0.05  # occluders pass in front
    meta = read_metadata(tmp_path / "metadata")
    boxes_per_frame = [len(meta.splits["test"].boxes[i]) for i in meta.splits["test"].ids]
    assert max(boxes_per_frame) >= 2 or SynthConfig.second_object_prob == 0


def part_pixels(track, t: int) -> np.ndarray:
    image, _ = track.patch(t)
    return np.abs(image.astype(int) - track.body.astype(int)).sum(axis=2) > 60


def test_the_part_moves_over_the_body_across_frames():
    """Max-pooling a few frames' parts covers far more of the body than one frame's part:
    the property CAM temporal max-pooling relies on."""
    for seed in range(5):
        track = make_track(np.random.default_rng(seed), 0, frames=8, frame_w=128, frame_h=96, leaves=False)
        single = part_pixels(track, 0).sum()
        union = np.zeros((PATCH, PATCH), bool)
        for t in range(4):
            union |= part_pixels(track, t)
        assert single > 0
        assert union.sum() > 1.8 * single, (seed, single, union.sum())
        assert (union & (track.body_mask > 0.5)).sum() > 0.7 * union.sum()  # it moves over the body


def test_bodies_look_alike_across_classes_parts_do_not():
    body_means, part_hues = {}, {}
    for class_idx in range(4):
        tracks = [make_track(np.random.default_rng([7, class_idx, v]), class_idx, 4, 128, 96, False) for v in range(6)]
        body_means[class_idx] = np.mean([t.body[t.body_mask > 0.5].mean(axis=0) for t in tracks], axis=0)
        hsv = [cv2.cvtColor(np.uint8([[t.part_colour]]), cv2.COLOR_BGR2HSV)[0, 0, 0] for t in tracks]
        part_hues[class_idx] = float(np.median(hsv))
    body_spread = max(np.abs(body_means[a] - body_means[b]).max() for a in body_means for b in body_means)
    assert body_spread < 25  # grey levels: mean body colours are close for every class
    hues = sorted(part_hues.values())
    assert min(b - a for a, b in zip(hues, hues[1:])) > 15  # part colours are far apart


def test_cli_synth_prints_figures_and_refuses_to_overwrite(cli, tmp_path):
    out = tmp_path / "ds"
    args = ["synth", str(out), "--classes", "2", "--videos", "1", "--shots", "1", "--frames", "8", "--size", "48",
            "--set", "synth.eval_stride=2"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "frames on disk: train 16" in result.stdout and "mean box area:" in result.stdout
    assert (out / "preview.png").stat().st_size > 0 and (out / "synth-config.yaml").exists()
    again = cli(*args)
    assert again.returncode != 0 and "already holds a dataset" in again.stderr
    stale = out / "red_star" / "data" / "0001" / "shots" / "009"
    stale.mkdir()
    replaced = cli(*args, "--overwrite", "--seed", "3")
    assert replaced.returncode == 0, replaced.stderr
    assert not stale.exists()
