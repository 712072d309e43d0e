"""Stage 2 on a tiny synthetic dataset: neighbour-frame buffers, in-process and Ray Train
training from a CAM store, resume of the ELB schedule, and the store checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tcam_ray.data import DatasetError
from tcam_ray.data.buffers import (buffer_indices, clip_frames, joint_crop_flip, neighbour_offsets, shots_from_store,
                                   training_rows, window_frames)
from tcam_ray.data.cam_store import CamStore, CamStoreWriter, StoreInfo
from tcam_ray.data.pipeline import buffer_train_dataset
from tcam_ray.data.synthetic import generate
from tcam_ray.methods.tcam_losses import ExtendedLogBarrier
from tcam_ray.train.cams import fill_cam_store
from tcam_ray.train.checkpoints import load_state, read_meta
from tcam_ray.train.evaluate import evaluate_checkpoint
from tcam_ray.train.trainer import run_training

from .conftest import tiny_run_config, tiny_synth

TINY = tiny_synth()
SHOTS, FRAMES_PER_SHOT = 8, 8


def config(dataset_root, run_root, *overrides):
    return tiny_run_config(dataset_root, run_root, "train.epochs=1", "model.layer4_stride=1", *overrides)


@pytest.fixture(scope="module")
def store(tmp_path_factory, local_ray):
    """A tiny dataset, a one-epoch stage-1 classifier and its CAM store."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(TINY, root)
    runs = tmp_path_factory.mktemp("runs")
    cfg = config(root, runs, "run.name=cam")
    stage1 = run_training(cfg, "cam", out=lambda line: None)
    path = fill_cam_store(cfg, stage1.best_corloc, runs / "cams.parquet").path
    return root, path


# --------------------------------------------------------------------------- buffers


def test_neighbour_offsets_put_the_frame_first():
    assert neighbour_offsets(0, "before").tolist() == [0]
    assert neighbour_offsets(2, "before").tolist() == [0, -1, -2]
    assert neighbour_offsets(1, "after").tolist() == [0, 1]
    assert neighbour_offsets(2, "both").tolist() == [0, -1, -2, 1, 2]


def test_buffer_indices_mask_shot_edges():
    indices, valid = buffer_indices(4, neighbour_offsets(1, "both"), np.array([0, 2, 3]))
    assert indices.tolist() == [[0, 0, 1], [2, 1, 3], [3, 2, 3]]
    assert valid.tolist() == [[True, False, True], [True, True, True], [True, True, False]]


def small_store(tmp_path, frame_ids, shot_ids, frame_idx, maps) -> CamStore:
    info = StoreInfo("d", "f" * 64, ["a"], "ckpt", "id", "cam", maps.shape[1], "uint8")
    writer = CamStoreWriter(tmp_path / "s.parquet", info)
    writer.write(frame_ids, shot_ids, frame_idx, [0] * len(frame_ids), maps)
    return CamStore.read(writer.close())


def test_shots_keep_frame_order_whatever_the_store_order(tmp_path):
    frame_idx = [2, 0, 1, 1, 0]
    shot_ids = ["s1", "s1", "s1", "s0", "s0"]
    frame_ids = [f"{s}/frame{i}.jpg" for s, i in zip(shot_ids, frame_idx)]
    maps = np.stack([np.full((4, 4), (10 * i + j) / 255, np.float32) for i, j in zip(frame_idx, range(5))])
    shots = shots_from_store(small_store(tmp_path, frame_ids, shot_ids, frame_idx, maps))
    by_shot = {r["shot_id"]: r["frame_ids"] for r in shots.to_pylist()}
    assert by_shot == {"s0": ["s0/frame0.jpg", "s0/frame1.jpg"], "s1": ["s1/frame0.jpg", "s1/frame1.jpg", "s1/frame2.jpg"]}


def test_frame_and_buffer_are_cropped_and_flipped_together():
    rng = np.random.default_rng(0)
    image = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    maps = np.stack([image[..., 0], 255 - image[..., 0]])  # maps made from the frame's red channel
    for seed in range(6):
        out_image, out_maps = joint_crop_flip(image, maps, 24, 16, True, np.random.default_rng(seed))
        assert out_image.shape == (16, 16, 3) and out_maps.shape == (2, 16, 16)
        assert np.abs(out_maps[0].astype(int) - out_image[..., 0]).max() <= 1
        assert np.abs(out_maps[1].astype(int) - (255 - out_image[..., 0].astype(int))).max() <= 1


def test_training_rows_one_per_shot_and_every_frame(store):
    root, path = store
    shots = shots_from_store(CamStore.read(path))
    offsets = neighbour_offsets(1, "before")
    kwargs = dict(root=str(root), offsets=offsets, cam_size=56, cam_dtype="uint8", resize=40, crop=32, flip=True)
    one = training_rows(shots, every_frame=False, seed=0, **kwargs)
    assert one["image"].shape == (SHOTS, 1, 32, 32, 3) and one["buffer"].shape == (SHOTS, 1, 2, 32, 32)
    every = training_rows(shots, every_frame=True, seed=0, **kwargs)
    assert len(every["label"]) == SHOTS * FRAMES_PER_SHOT
    assert (~every["valid"][:, 0, 1]).sum() == SHOTS  # each shot's first frame has no frame before it
    assert every["valid"][:, 0, 0].all()
    clips = training_rows(shots, every_frame=False, clip=2, window=0.6, seed=0, **kwargs)
    assert clips["image"].shape == (SHOTS, 2, 32, 32, 3) and clips["valid"].shape == (SHOTS, 2, 2)
    assert clips["valid"].all()  # the window (frames 2-6 of 8) keeps both frames' predecessors in the shot


def test_clip_windows_are_the_central_frames_as_colocam():
    assert window_frames(8, 0.6).tolist() == [2, 3, 4, 5, 6]  # p = int(0.6 * 8) = 4 frames around frame 4
    assert window_frames(10, 1.0).tolist() == list(range(10))
    assert window_frames(3, 0.6).tolist() == [1] and window_frames(2, 0.6).tolist() == [0, 1]
    rng = np.random.default_rng(0)
    draws = np.concatenate([clip_frames(8, 2, 0.6, False, rng) for _ in range(400)])
    assert set(map(tuple, draws.tolist())) == {(2, 3), (3, 4), (4, 5), (5, 6)}  # consecutive, in the window
    assert clip_frames(8, 2, 0.6, True, rng).tolist() == [[2, 3], [3, 4], [4, 5], [5, 6]]
    assert clip_frames(3, 2, 0.6, True, rng).tolist() == [[1, 1]]  # a 1-frame window repeats it


def test_ray_data_buffer_rows(store):
    root, path = store
    cfg = config(root, root.parent, "input.sampling=all", "tcam.n=2", "tcam.direction=both")
    shots = shots_from_store(CamStore.read(path))
    batches = list(buffer_train_dataset(shots, cfg, 56, "uint8").iter_batches(batch_size=16, batch_format="numpy"))
    buffers = np.concatenate([b["buffer"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    assert buffers.shape == (SHOTS * FRAMES_PER_SHOT, 1, 5, 32, 32) and buffers.dtype == np.uint8
    assert valid[:, 0].sum(axis=0).tolist() == [64, 56, 48, 56, 48]
    cfg = config(root, root.parent, "tcam.clip=2", "tcam.clip_window=0.6")
    batches = list(buffer_train_dataset(shots, cfg, 56, "uint8").iter_batches(batch_size=3, batch_format="numpy"))
    assert {b["image"].shape[1:] for b in batches} == {(2, 32, 32, 3)}  # clips stay whole through batching
    assert sum(len(b["label"]) for b in batches) == SHOTS


# --------------------------------------------------------------------------- training


def elb_t(checkpoint) -> float:
    elb = ExtendedLogBarrier()
    elb.load_state_dict(load_state(checkpoint)["extra"]["elb"])
    return elb.t


def test_stage2_in_process_then_resumed_keeps_the_elb_schedule(store, tmp_path):
    root, path = store
    cfg = config(root, tmp_path, f"tcam.cams={path}", "input.sampling=all", "train.epochs=1", "tcam.elb_mulcoef=2.0")
    first = run_training(cfg, "tcam", out=lambda line: None)
    assert read_meta(first.last)["stage"] == "tcam"
    assert elb_t(first.last) == pytest.approx(2.0)
    cfg2 = config(root, tmp_path, f"tcam.cams={path}", "input.sampling=all", "train.epochs=2", "tcam.elb_mulcoef=2.0")
    second = run_training(cfg2, "tcam", out=lambda line: None)
    assert elb_t(second.last) == pytest.approx(4.0)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["epoch"] for r in train] == [1, 2]
    assert {"self_learning", "crf", "max_size"} <= set(train[0])  # each enabled loss term is logged
    report = evaluate_checkpoint(second.last, cfg2, "test", tmp_path / "eval")
    assert 0 <= report["stages"]["tcam"]["corloc"] <= 100


def test_stage2_needs_a_store_of_this_dataset(store, tmp_path):
    root, path = store
    with pytest.raises(ValueError, match=r"stage tcam needs a CAM store: --set tcam.cams=PATH"):
        run_training(config(root, tmp_path), "tcam")
    other = tmp_path / "other"
    shutil.copytree(root, other)
    labels = other / "metadata" / "train" / "class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[0] = lines[0].rsplit(",", 1)[0] + ",1"  # relabel one shot: another dataset
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"CAM store made for dataset 'synthetic' .* not for this dataset"):
        run_training(config(other, tmp_path, f"tcam.cams={path}"), "tcam")


def test_colocam_trains_on_clips_from_the_classifier_it_is_told(store, tmp_path):
    """CoLo-CAM's stage 2 in-process: clips of 2 frames, n = 0, ROI largest, many seeds, the colour CRF over
    each clip (adaptive: each clip weighs its weight), on the classifier named by tcam.classifier."""
    root, path = store
    classifier = CamStore.read(path).info.checkpoint.replace("best-corloc", "best-top1")
    cfg = config(root, tmp_path, f"tcam.cams={path}", "tcam.classifier=best-top1", "tcam.clip=2",
                 "tcam.clip_window=0.6", "tcam.n=0", "tcam.roi=largest", "tcam.fg_seeds=40", "tcam.bg_seeds=40",
                 "tcam.max_p=0.7", "tcam.colour_crf=true", "tcam.colour_crf_weight=9", "input.batch_size=2")
    result = run_training(cfg, "tcam", out=lambda line: None)
    train = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][0]
    assert train["colour_crf"] == pytest.approx(-9.0)  # adaptive: -weight per clip, whatever the energy
    assert train["samples"] == SHOTS // 2 * 2
    state, stage1 = load_state(result.last)["model"], load_state(classifier)["model"]
    assert all(np.array_equal(state[f"classifier.{key}"].numpy(), value.numpy()) for key, value in stage1.items())


def test_colour_crf_needs_clips(store, tmp_path):
    root, path = store
    with pytest.raises(ValueError, match=r"tcam.colour_crf.*tcam.clip"):
        config(root, tmp_path, f"tcam.cams={path}", "tcam.colour_crf=true")
    with pytest.raises(ValueError, match=r"tcam.classifier.*not a stage-1 checkpoint"):
        run_training(config(root, tmp_path, f"tcam.cams={path}", "tcam.classifier=best-nothing"), "tcam")
