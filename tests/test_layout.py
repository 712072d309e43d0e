"""The YouTube-Objects metadata reader/writer, on the real YTOv1 split files and broken copies."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tcam_ray.data.layout import DatasetError, DatasetMetadata, SplitMetadata, read_metadata, write_metadata

from .conftest import YTOV1_METADATA


@pytest.fixture
def ytov1_copy(tmp_path) -> Path:
    folder = tmp_path / "metadata"
    shutil.copytree(YTOV1_METADATA, folder)
    return folder


def test_real_ytov1_split_files_parse_as_they_are():
    meta = read_metadata(YTOV1_METADATA)
    assert meta.class_names == ["aeroplane", "bird", "boat", "car", "cat", "cow", "dog", "horse", "motorbike", "train"]
    train, val, test = meta.splits["train"], meta.splits["val"], meta.splits["test"]
    assert len(train.ids) == 2768 and train.ids[0] == "aeroplane/data/0013/shots/330"
    assert len(val.ids) == 325 and len(test.ids) == 346
    assert sum(len(b) for b in test.boxes.values()) == 396
    assert sum(len(b) for b in val.boxes.values()) == 347
    assert set(test.sizes) == set(test.ids) and test.sizes["aeroplane/data/0009/shots/102/frame0001.jpg"] == (450, 360)
    assert train.labels["train/data/0014/shots/010"] == 9 and not train.boxes


def test_a_frame_with_several_boxes_keeps_them_all_in_file_order():
    boxes = read_metadata(YTOV1_METADATA).splits["test"].boxes["horse/data/0004/shots/046/frame0081.jpg"]
    lines = [l for l in (YTOV1_METADATA / "test" / "localization.txt").read_text().splitlines()
             if l.startswith("horse/data/0004/shots/046/frame0081.jpg,")]
    assert len(boxes) == len(lines) == 4
    assert boxes == [tuple(float(v) for v in line.split(",")[1:]) for line in lines]


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def append_line(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text + "\n")


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(DatasetError) as err:
        read_metadata(folder)
    return err.value.problems


def test_label_outside_class_list_names_file_and_line(ytov1_copy):
    replace_line(ytov1_copy / "val" / "class_labels.txt", 7, "aeroplane/data/0004/shots/037/frame0001.jpg,12")
    (problem,) = problems_of(ytov1_copy)
    assert problem.startswith(f"{ytov1_copy / 'val' / 'class_labels.txt'}:7: label 12 of 'aeroplane/data/0004/shots/037")
    assert "not an id in class_id.yaml" in problem


@pytest.mark.parametrize(
    "file_name, line, text, expected",
    [
        ("class_labels.txt", 3, "dog/data/0013/shots/042;6", "expected 'id,label'"),
        ("localization.txt", 2, "aeroplane/data/0004/shots/022/frame0001.jpg,1,2,three,4", "expected 'id,x0,y0,x1,y1'"),
        ("localization.txt", 2, "aeroplane/data/0004/shots/022/frame0001.jpg,50,2,10,40", "is empty: need x1 > x0"),
        ("image_sizes.txt", 4, "aeroplane/data/0004/shots/067/frame0001.jpg,480", "expected 'id,width,height'"),
        ("image_sizes.txt", 4, "aeroplane/data/0004/shots/067/frame0001.jpg,0,360", "expected 'id,width,height'"),
        ("image_ids.txt", 5, "../outside/frame0001.jpg", "ids are paths relative to the dataset root"),
    ],
)
def test_malformed_lines_name_file_and_line(ytov1_copy, file_name, line, text, expected):
    split = "train" if text.startswith("dog/data/0013/shots/042") else "val"
    replace_line(ytov1_copy / split / file_name, line, text)
    problems = problems_of(ytov1_copy)
    assert any(p.startswith(f"{ytov1_copy / split / file_name}:{line}: ") and expected in p for p in problems), problems


def test_every_problem_is_reported_at_once(ytov1_copy):
    replace_line(ytov1_copy / "test" / "class_labels.txt", 1, "aeroplane/data/0009/shots/102/frame0001.jpg,x")
    append_line(ytov1_copy / "test" / "localization.txt", "cat/data/9999/shots/001/frame0001.jpg,1,1,5,5")
    append_line(ytov1_copy / "train" / "image_ids.txt", "aeroplane/data/0013/shots/330")
    problems = problems_of(ytov1_copy)
    assert len(problems) == 4, problems
    joined = "\n".join(problems)
    assert "test/class_labels.txt:1: expected 'id,label'" in joined
    assert "test/image_ids.txt:1: id 'aeroplane/data/0009/shots/102/frame0001.jpg' has no line in class_labels.txt" in joined
    assert "test/localization.txt:397: id 'cat/data/9999/shots/001/frame0001.jpg' is not listed in image_ids.txt" in joined
    assert "train/image_ids.txt:2769: id 'aeroplane/data/0013/shots/330' repeats line 1" in joined


def test_broken_class_list(tmp_path):
    folder = tmp_path / "metadata"
    (folder / "train").mkdir(parents=True)
    (folder / "class_id.yaml").write_text("{cat: 0, dog: 0}\n")
    with pytest.raises(DatasetError, match=r"class_id.yaml: two classes share an id"):
        read_metadata(folder)
    (folder / "class_id.yaml").write_text("[cat, dog]\n")
    with pytest.raises(DatasetError, match=r"class_id.yaml: expected a mapping 'class name: id'"):
        read_metadata(folder)


def test_missing_folders_and_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"metadata folder not found"):
        read_metadata(tmp_path / "nowhere")
    folder = tmp_path / "metadata"
    (folder / "val").mkdir(parents=True)
    (folder / "class_id.yaml").write_text("{cat: 0}\n")
    with pytest.raises(DatasetError, match=r"val/image_ids.txt: file not found"):
        read_metadata(folder)


def test_writer_round_trip(tmp_path):
    classes = {"cat": 0, "dog": 1}
    train = SplitMetadata("train", ids=["cat/data/0001/shots/001"], labels={"cat/data/0001/shots/001": 0})
    frame = "dog/data/0002/shots/001/frame0001.jpg"
    test = SplitMetadata("test", ids=[frame], labels={frame: 1}, sizes={frame: (64, 48)},
                         boxes={frame: [(1.5, 2.0, 30.25, 40.0), (0.0, 0.0, 10.0, 10.0)]})
    write_metadata(DatasetMetadata(tmp_path / "meta", classes, {"train": train, "test": test}))
    back = read_metadata(tmp_path / "meta")
    assert back.classes == classes
    assert back.splits["train"] == train and back.splits["test"] == test
