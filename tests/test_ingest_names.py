"""`ingest` with hostile names: video files named `..mp4`, `...mp4` or like a hidden staging
folder get safe folder names that `index` reads back; tags that are the layout's reserved
folder names are refused before anything is written (issue 16)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tcam_ray.data import index_dataset, read_metadata
from tcam_ray.video.ingest import MAX_NAME, IngestItem, ingest_videos, video_name

from .conftest import tiny_run_config
from .test_video import CARPHONE, read_all, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The first 10 frames of a real video: one shot."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", read_all(CARPHONE)[:10])


def copies(clip: Path, folder: Path, *names: str) -> list[Path]:
    folder.mkdir(exist_ok=True)
    return [Path(shutil.copy(clip, folder / name)) for name in names]


def shot_folders(root: Path) -> set[str]:
    """Every shot folder under the class folders, as an id (hidden ones included)."""
    return {str(p.relative_to(root)) for p in root.glob("*/data/*/shots/*") if p.is_dir()}


def index(root: Path):
    return index_dataset(tiny_run_config(root, root.parent / "runs").dataset)


@pytest.mark.parametrize("file_name, expected", [
    ("..mp4", "_"), ("...mp4", "__"), (".hidden.mp4", "_hidden"), ("..a..mp4", "__a."),
    (".clip.partial-42.mp4", "_clip.partial-42"), ("car phone#2.mp4", "car_phone_2"), ("été.mp4", "_t_"),
    ("b" * 240 + ".mp4", "b" * MAX_NAME),
])
def test_video_names_are_safe_folder_names(file_name, expected):
    assert video_name(Path("videos") / file_name) == expected


def test_dot_named_videos_are_ingested_under_safe_names_that_index_reads(cli, clip, tmp_path):
    videos = copies(clip, tmp_path / "videos", "..mp4", "...mp4", ".hidden.mp4", "hidden.mp4")
    root = tmp_path / "data"
    result = cli("ingest", "--tag", "person", *map(str, videos), str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ingested 4 of 4 videos" in result.stdout
    for video, name in zip(videos, ["_", "__", "_hidden", "hidden"]):
        assert f"  ok     {video} -> person/data/{name} (train): 1 shots, 10 of 10 frames" in result.stdout
    ids = read_metadata(root / "metadata").splits["train"].ids
    assert sorted(ids) == sorted(shot_folders(root)) == [f"person/data/{n}/shots/001" for n in ("_", "__", "_hidden",
                                                                                             "hidden")]
    indexed = cli("index", "--root", str(root), "--set", f"run.root={tmp_path / 'runs'}")
    assert indexed.returncode == 0, indexed.stdout + indexed.stderr
    assert "train: 40 frames in 4 shots" in indexed.stdout


def test_a_video_named_like_a_staging_folder_does_not_clash_with_it(clip, tmp_path):
    staging_like = f".clip.partial-{os.getpid()}.mp4"  # the staging folder of video `clip`, in this process
    videos = copies(clip, tmp_path / "videos", staging_like, "clip.mp4", "..mp4")
    root = tmp_path / "data"
    cfg = tiny_run_config(root, tmp_path).video
    summary = ingest_videos([IngestItem(v, "person") for v in videos], root, cfg)
    assert summary.failures == []
    assert [v.name for v in summary.done] == [f"_clip.partial-{os.getpid()}", "clip", "_"]
    again = ingest_videos([IngestItem(copies(clip, tmp_path / "more", "..mp4")[0], "person")], root, cfg)
    assert "video person/data/_ already exists" in str(again.failures[0])  # not written over
    assert index(root).counts() == {"train": 30}
    assert sorted(read_metadata(root / "metadata").splits["train"].ids) == sorted(shot_folders(root))


def test_a_long_file_name_is_cut_and_a_long_tag_refused(clip, tmp_path):
    long_video, = copies(clip, tmp_path / "videos", "b" * 240 + ".mp4")
    root = tmp_path / "data"
    cfg = tiny_run_config(root, tmp_path).video
    summary = ingest_videos([IngestItem(long_video, "person"), IngestItem(long_video, "c" * 201)], root, cfg)
    assert [v.name for v in summary.done] == ["b" * MAX_NAME]
    assert [str(e) for e in summary.failures] == [
        f"{long_video}: class name too long (201 characters): it becomes a folder name, so use at most {MAX_NAME}"]
    assert index(root).counts() == {"train": 10}


RESERVED = "reserved class name {!r}: the dataset's metadata/ folder has that name, so use another one"


def test_reserved_tags_are_refused_before_anything_is_written(cli, clip, tmp_path):
    copies(clip, tmp_path, "good.mp4")
    tags = tmp_path / "tags.csv"
    tags.write_text("good.mp4,metadata\n"      # line 1: the metadata folder
                    "good.mp4,Metadata\n"      # line 2: the same folder where names ignore case
                    "good.mp4,.\n"             # line 3
                    "good.mp4,..\n"            # line 4
                    "good.mp4,person\n")       # line 5: fine
    root = tmp_path / "data"
    result = cli("ingest", "--tags", str(tags), str(root))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert f"  failed {tags}:1: {RESERVED.format('metadata')}" in lines
    assert f"  failed {tags}:2: {RESERVED.format('Metadata')}" in lines
    for line, tag in ((3, "."), (4, "..")):
        assert any(text.startswith(f"  failed {tags}:{line}: malformed class name {tag!r}") for text in lines)
    assert "ingested 1 of 5 videos" in result.stdout and "4 of 5 videos failed" in result.stdout
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (root / "metadata").iterdir()) == [".ingest.lock", "class_id.yaml", "train"]
    assert read_metadata(root / "metadata").classes == {"person": 0}
    assert {p.relative_to(root).parts[0] for p in root.rglob("*.jpg")} == {"person"}
    assert index(root).counts() == {"train": 10}


def test_a_reserved_tag_on_the_command_line_fails_each_video(cli, clip, tmp_path):
    video, = copies(clip, tmp_path, "good.mp4")
    root = tmp_path / "data"
    result = cli("ingest", "--tag", "metadata", str(video), str(root))
    assert result.returncode == 1, result.stderr
    assert f"  failed {video}: {RESERVED.format('metadata')}\n" in result.stdout
    assert "ingested 0 of 1 videos" in result.stdout and "1 of 1 videos failed" in result.stdout
    assert "Traceback" not in result.stderr
    assert list(root.rglob("*.jpg")) == [] and not (root / "metadata" / "data").exists()
