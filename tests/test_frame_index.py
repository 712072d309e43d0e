"""The frame index, on the real YTOv1 metadata with placeholder frames, and on broken datasets."""
from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tcam_ray.config import DatasetConfig
from tcam_ray.data import index_dataset
from tcam_ray.data.frame_index import INDEX_SCHEMA, FrameIndex, build_frame_index, frame_number
from tcam_ray.data.layout import DatasetError, DatasetMetadata, SplitMetadata, read_metadata, write_metadata

from .conftest import YTOV1_METADATA

TRAIN_FRAME_NAMES = ["frame0010.jpg", "frame0002.jpg", "frame0001.jpg"]  # written out of order on purpose


@lru_cache(maxsize=None)
def jpeg_bytes(width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 127, np.uint8))
    assert ok
    return data.tobytes()


def put_frame(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(width, height))


@pytest.fixture(scope="module")
def ytov1_root(tmp_path_factory) -> Path:
    """Placeholder frames for the real YTOv1 metadata: 3 small frames per train shot,
    and every val/test frame at the size image_sizes.txt gives it."""
    root = tmp_path_factory.mktemp("ytov1")
    meta = read_metadata(YTOV1_METADATA)
    for shot in meta.splits["train"].ids:
        for name in TRAIN_FRAME_NAMES:
            put_frame(root / shot / name, 32, 24)
        (root / shot / "notes.txt").write_text("not a frame")
    for split in ("val", "test"):
        for frame_id, (width, height) in meta.splits[split].sizes.items():
            put_frame(root / frame_id, width, height)
    return root


@pytest.fixture(scope="module")
def ytov1_index(ytov1_root) -> FrameIndex:
    return build_frame_index(ytov1_root, read_metadata(YTOV1_METADATA), "ytov1")


def test_ytov1_index_has_the_published_counts(ytov1_index):
    assert ytov1_index.counts() == {"train": 3 * 2768, "val": 325, "test": 346}
    test = ytov1_index.split("test")
    assert sum(len(b) for b in test["boxes"].to_pylist()) == 396
    assert ytov1_index.info.classes[0] == "aeroplane" and len(ytov1_index.info.classes) == 10


def test_ytov1_index_schema_is_the_documented_one(ytov1_index):
    assert ytov1_index.table.schema.remove_metadata() == INDEX_SCHEMA


def test_train_frames_are_listed_in_frame_number_order(ytov1_index):
    train = ytov1_index.split("train").slice(0, 3).to_pylist()
    shot = "aeroplane/data/0013/shots/330"
    assert [r["frame_id"] for r in train] == [f"{shot}/frame0001.jpg", f"{shot}/frame0002.jpg", f"{shot}/frame0010.jpg"]
    assert [r["frame_idx"] for r in train] == [0, 1, 2]
    assert all(r["shot_id"] == shot and r["label"] == 0 and r["boxes"] == [] for r in train)
    assert (train[0]["width"], train[0]["height"]) == (32, 24)


def test_eval_frames_keep_sizes_labels_and_every_box(ytov1_index):
    rows = {r["frame_id"]: r for r in ytov1_index.split("test").to_pylist()}
    multi = rows["horse/data/0004/shots/046/frame0081.jpg"]
    assert len(multi["boxes"]) == 4 and multi["label"] == 7
    assert multi["shot_id"] == "horse/data/0004/shots/046"
    first = rows["aeroplane/data/0009/shots/102/frame0001.jpg"]
    assert (first["width"], first["height"]) == (450, 360)
    assert first["boxes"] == [[87.07894736842107, 101.0263157894737, 383.92105263157885, 207.3421052631579]]


def test_index_round_trips_through_parquet(ytov1_index, tmp_path):
    path = ytov1_index.write(tmp_path / "sub" / "index.parquet")
    back = FrameIndex.read(path)
    assert back.info == ytov1_index.info
    assert back.table.equals(ytov1_index.table)


def test_a_parquet_file_that_is_not_an_index_is_refused(tmp_path):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")
    with pytest.raises(DatasetError, match=r"other.parquet: Parquet file without tcam-ray frame index metadata"):
        FrameIndex.read(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_text("junk")
    with pytest.raises(DatasetError, match=r"junk.parquet: not a readable Parquet file"):
        FrameIndex.read(tmp_path / "junk.parquet")


def test_cli_indexes_a_dataset_written_elsewhere(cli, ytov1_root, tmp_path):
    result = cli("index", "--root", str(ytov1_root), "--metadata", str(YTOV1_METADATA),
                 "--set", f"run.root={tmp_path}", "--set", "run.name=ix", "--set", "dataset.name=ytov1")
    assert result.returncode == 0, result.stderr
    assert "test: 346 frames" in result.stdout and "396 boxes" in result.stdout
    index = FrameIndex.read(tmp_path / "ix" / "frame_index.parquet")
    assert index.counts()["train"] == 3 * 2768
    assert (tmp_path / "ix" / "config.yaml").exists()


# --------------------------------------------------------------------------- broken datasets

SHOT = "cat/data/0001/shots/001"
EVAL_FRAME = "cat/data/0002/shots/001/frame0003.jpg"


def tiny_dataset(root: Path) -> DatasetConfig:
    """Two classes, one train shot of 3 frames, one test frame with a box."""
    for n in (1, 2, 3):
        put_frame(root / SHOT / f"frame{n:04d}.jpg", 40, 30)
    put_frame(root / EVAL_FRAME, 40, 30)
    train = SplitMetadata("train", ids=[SHOT], labels={SHOT: 0})
    test = SplitMetadata("test", ids=[EVAL_FRAME], labels={EVAL_FRAME: 1}, sizes={EVAL_FRAME: (40, 30)},
                         boxes={EVAL_FRAME: [(2.0, 3.0, 20.0, 25.0)]})
    write_metadata(DatasetMetadata(root / "metadata", {"cat": 0, "dog": 1}, {"train": train, "test": test}))
    return DatasetConfig(name="tiny", root=str(root))


def index_problems(cfg: DatasetConfig) -> list[str]:
    with pytest.raises(DatasetError) as err:
        index_dataset(cfg)
    return err.value.problems


def test_tiny_dataset_indexes(tmp_path):
    index = index_dataset(tiny_dataset(tmp_path))
    assert index.counts() == {"train": 3, "test": 1}
    assert index.split("test")["frame_idx"].to_pylist() == [0]


def test_missing_eval_frame_names_the_list_line_and_the_file(tmp_path):
    cfg = tiny_dataset(tmp_path)
    (tmp_path / EVAL_FRAME).unlink()
    (problem,) = index_problems(cfg)
    assert problem == f"{tmp_path / 'metadata' / 'test' / 'image_ids.txt'}:1: {tmp_path / EVAL_FRAME}: frame file not found"


def test_shot_without_frames(tmp_path):
    cfg = tiny_dataset(tmp_path)
    for frame in (tmp_path / SHOT).iterdir():
        frame.unlink()
    (problem,) = index_problems(cfg)
    assert problem.startswith(f"{tmp_path / 'metadata' / 'train' / 'image_ids.txt'}:1: shot folder")
    assert problem.endswith("has no frames (expected files like frame0001.jpg)")


def test_missing_shot_folder(tmp_path):
    cfg = tiny_dataset(tmp_path)
    shutil.rmtree(tmp_path / SHOT)
    (problem,) = index_problems(cfg)
    assert f"train/image_ids.txt:1: shot folder {tmp_path / SHOT} not found" in problem


def test_size_disagreeing_with_image_sizes(tmp_path):
    cfg = tiny_dataset(tmp_path)
    put_frame(tmp_path / EVAL_FRAME, 64, 48)
    (problem,) = index_problems(cfg)
    assert problem.startswith(f"{tmp_path / 'metadata' / 'test' / 'image_sizes.txt'}:1: ")
    assert "listed as 40x30 but the image" in problem and "is 64x48" in problem


def test_unreadable_frame_is_named(tmp_path):
    cfg = tiny_dataset(tmp_path)
    (tmp_path / SHOT / "frame0002.jpg").write_bytes(b"this is not a jpeg")
    (problem,) = index_problems(cfg)
    assert f"{tmp_path / SHOT / 'frame0002.jpg'}: not a readable image" in problem


def test_box_outside_the_image(tmp_path):
    cfg = tiny_dataset(tmp_path)
    test_boxes = tmp_path / "metadata" / "test" / "localization.txt"
    test_boxes.write_text(f"{EVAL_FRAME},50,3,60,25\n")
    (problem,) = index_problems(cfg)
    assert "test/localization.txt:1: box (50.0, 3.0, 60.0, 25.0) lies outside the 40x30 image" in problem


def test_duplicate_frame_numbers_in_a_shot(tmp_path):
    cfg = tiny_dataset(tmp_path)
    put_frame(tmp_path / SHOT / "frame2.jpg", 40, 30)
    (problem,) = index_problems(cfg)
    assert "frame0002.jpg and frame2.jpg have the same frame number 2" in problem


def test_all_problems_come_together(tmp_path):
    cfg = tiny_dataset(tmp_path)
    (tmp_path / EVAL_FRAME).unlink()
    (tmp_path / SHOT / "frame0001.jpg").write_bytes(b"")
    assert len(index_problems(cfg)) == 2


def test_probe_first_reads_one_header_per_shot(tmp_path):
    cfg = tiny_dataset(tmp_path)
    put_frame(tmp_path / SHOT / "frame0003.jpg", 80, 60)
    sizes_all = index_dataset(cfg).split("train")["width"].to_pylist()
    cfg.probe_frames = "first"
    sizes_first = index_dataset(cfg).split("train")["width"].to_pylist()
    assert sizes_all == [40, 40, 80] and sizes_first == [40, 40, 40]


def test_fingerprint_follows_content(tmp_path):
    cfg = tiny_dataset(tmp_path)
    first = index_dataset(cfg).info.fingerprint
    assert index_dataset(cfg).info.fingerprint == first
    labels = tmp_path / "metadata" / "train" / "class_labels.txt"
    labels.write_text(f"{SHOT},1\n")
    assert index_dataset(cfg).info.fingerprint != first


def test_metadata_may_live_outside_the_root(tmp_path):
    cfg = tiny_dataset(tmp_path / "frames")
    shutil.move(tmp_path / "frames" / "metadata", tmp_path / "elsewhere")
    cfg.metadata = str(tmp_path / "elsewhere")
    assert index_dataset(cfg).counts()["train"] == 3


def test_cli_index_error_names_file_and_exits_2(cli, tmp_path):
    tiny_dataset(tmp_path / "ds")
    (tmp_path / "ds" / EVAL_FRAME).unlink()
    result = cli("index", "--root", str(tmp_path / "ds"), "--set", f"run.root={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert "test/image_ids.txt:1:" in result.stderr and "frame file not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name, number", [("frame0042.jpg", 42), ("frame7.PNG", 7), ("00012.jpeg", 12),
                                          ("notes.txt", None), ("frame.jpg", None), ("thumbs.db", None)])
def test_frame_number(name, number):
    assert frame_number(name) == number
