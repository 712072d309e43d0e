"""Every verb with the wrong input a user can give: one line on stderr naming the file, key or value,
exit code 2, no traceback, and nothing left behind (no run folder). Run in this process through the
console script's own entry point (`cli.app.main`): fast, the same error handling."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tcam_ray.cli.app import main
from tcam_ray.bench.store import untrained_checkpoint
from tcam_ray.config import SynthConfig, load
from tcam_ray.data.cam_store import CamStoreWriter, StoreInfo, checkpoint_id
from tcam_ray.data.synthetic import generate

TINY = SynthConfig(classes=2, videos=1, val_videos=1, test_videos=1, shots=1, frames=4, size=48, eval_stride=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny dataset, one of other classes, one without a val split, a stage-1 checkpoint, and files of
    the wrong kind."""
    root = tmp_path_factory.mktemp("cli-errors")
    generate(TINY, root / "data")
    generate(SynthConfig(classes=3, videos=1, val_videos=1, test_videos=1, shots=1, frames=4, size=48, seed=5),
             root / "other-classes")
    generate(SynthConfig(classes=2, videos=1, val_videos=0, test_videos=1, shots=1, frames=4, size=48),
             root / "no-val")
    classes = sorted(p.name for p in (root / "data").iterdir() if p.is_dir() and p.name != "metadata")
    checkpoint = untrained_checkpoint(load(overrides=["model.arch=resnet18"]), classes, root / "checkpoint")
    damaged = root / "damaged-checkpoint"
    shutil.copytree(checkpoint, damaged)
    (damaged / "state.pt").write_bytes((damaged / "state.pt").read_bytes()[:4096])
    (root / "broken.yaml").write_text("train: [unclosed\n")
    (root / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (root / "not-a-store.parquet").write_text("just text")
    (root / "clip.mp4").write_bytes(b"not a video")
    write_store_of_another_dataset(root / "other-store.parquet", checkpoint, classes)
    (root / "sweep.yaml").write_text("config: nothing.yaml\nspace: {}\nschedule: asha\n")
    return root


def write_store_of_another_dataset(path: Path, checkpoint: Path, classes: list[str]) -> None:
    info = StoreInfo(dataset="elsewhere", dataset_fingerprint="0" * 64, classes=classes,
                     checkpoint=str(checkpoint), checkpoint_id=checkpoint_id(checkpoint / "state.pt"), method="cam",
                     size=4, dtype="uint8")
    writer = CamStoreWriter(path, info)
    writer.write(["a/data/0001/shots/001/frame0001.jpg"], ["a/data/0001/shots/001"], [0], [0], np.zeros((1, 4, 4)))
    writer.close()


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["tcam-ray", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    out, err = capsys.readouterr()
    return stopped.value.code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0][len("error: "):]


def dataset(files: Path, name: str = "data") -> list[str]:
    return ["--set", f"dataset.root={files / name}"]


def runs(tmp_path: Path) -> list[str]:
    return ["--set", f"run.root={tmp_path / 'runs'}"]


CASES = {
    # verb: [(arguments given the fixtures, the message expected)]
    "config": [
        (lambda f, t: ["config", "--config", str(f / "missing.yaml")], r"config file not found: .*missing\.yaml$"),
        (lambda f, t: ["config", "--config", str(f / "broken.yaml")], r".*broken\.yaml: not valid YAML: "),
        (lambda f, t: ["config", "--config", str(f / "binary.yaml")], r".*binary\.yaml: not a text file"),
        (lambda f, t: ["config", "--config", str(f)], r".*: a folder, not a config file$"),
        (lambda f, t: ["config", "--set", "train.lrr=0.1"], r"unknown config key 'train.lrr'.*did you mean 'train.lr'"),
        (lambda f, t: ["config", "--set", "train.lr=inf"], r"config key 'train.lr': must be a finite number, got 'inf'"),
        (lambda f, t: ["config", "--set", "train.lr"], r"--set train.lr: "),
    ],
    "index": [
        (lambda f, t: ["index", "--root", str(f / "nowhere"), *runs(t)], r".*nowhere/metadata: metadata folder not found"),
    ],
    "train": [
        (lambda f, t: ["train", "--stage", "tcm", *dataset(f), *runs(t)], r"unknown stage 'tcm'"),
        (lambda f, t: ["train", "--stage", "tcam", *dataset(f), *runs(t)], r"stage tcam needs a CAM store"),
        (lambda f, t: ["train", "--stage", "tcam", "--set", f"tcam.cams={f / 'not-a-store.parquet'}", *dataset(f),
                       *runs(t)], r".*not-a-store\.parquet: not a readable Parquet file"),
        (lambda f, t: ["train", "--stage", "tcam", "--set", f"tcam.cams={f / 'other-store.parquet'}", *dataset(f),
                       *runs(t)], r".*other-store\.parquet: CAM store made for dataset 'elsewhere' \(fingerprint 0+\), "
                                  r"not for this dataset \(fingerprint \w+\): run `tcam-ray cams` for it"),
        (lambda f, t: ["train", *dataset(f, "no-val"), *runs(t)], r".*: the dataset has no 'val' split"),
        (lambda f, t: ["train", *dataset(f, "nowhere"), *runs(t)], r".*nowhere/metadata: metadata folder not found"),
    ],
    "cams": [
        (lambda f, t: ["cams", "--checkpoint", str(f / "nowhere"), *dataset(f), *runs(t)],
         r".*nowhere: checkpoint folder not found"),
        (lambda f, t: ["cams", "--checkpoint", str(f / "damaged-checkpoint"), *dataset(f), *runs(t)],
         r".*damaged-checkpoint/state\.pt: truncated \(4096 of \d+ bytes\)"),
        (lambda f, t: ["cams", "--checkpoint", str(f / "broken.yaml"), *dataset(f), *runs(t)],
         r".*broken\.yaml is not a tcam-ray checkpoint \(a file, not a checkpoint folder\)"),
        (lambda f, t: ["cams", "--checkpoint", str(f / "checkpoint"), *dataset(f, "other-classes"), *runs(t)],
         r".*checkpoint was trained on classes \[.*\] but the dataset at .*other-classes has \[.*\]"),
    ],
    "evaluate": [
        (lambda f, t: ["evaluate", "--checkpoint", str(f / "damaged-checkpoint"), *dataset(f), *runs(t)],
         r".*damaged-checkpoint/state\.pt: truncated"),
        (lambda f, t: ["evaluate", "--checkpoint", str(f / "checkpoint"), *dataset(f, "other-classes"), *runs(t)],
         r".*checkpoint was trained on classes"),
        (lambda f, t: ["evaluate", "--checkpoint", str(f / "checkpoint"), "--split", "train", *dataset(f), *runs(t)],
         r"config key 'eval.split': 'train' is not one of"),
    ],
    "localize": [
        (lambda f, t: ["localize", str(f / "damaged-checkpoint"), str(f / "clip.mp4"), "--out", str(t / "out")],
         r".*damaged-checkpoint/state\.pt: truncated"),
        (lambda f, t: ["localize", str(f / "checkpoint"), str(f / "clip.mp4"), "--out", str(t / "out"),
                       "--class", "unicorn"], r"class 'unicorn' is not one of the checkpoint's classes"),
        (lambda f, t: ["localize", str(f / "other-store.parquet"), str(f / "clip.mp4"), "--out", str(t / "out")],
         r".*other-store\.parquet is not a tcam-ray checkpoint \(a file, not a checkpoint folder\)"),
    ],
    "tune": [
        (lambda f, t: ["tune", "--config", str(f / "missing.yaml")], r".*missing\.yaml"),
        (lambda f, t: ["tune", "--config", str(f / "broken.yaml")], r".*broken\.yaml: not valid YAML"),
        (lambda f, t: ["tune", "--config", str(f / "sweep.yaml")], r"unknown config key 'schedule'"),
    ],
    "synth": [
        (lambda f, t: ["synth", str(f / "data")], r".*data already holds a dataset \(metadata/ exists\)"),
        (lambda f, t: ["synth", str(t / "new"), "--classes", "13"], r"config key 'synth.classes': must be between 1 and 12"),
    ],
    "ingest": [
        (lambda f, t: ["ingest", str(t / "out")], r"give either --tag CLASS with video files, or --tags FILE\.csv"),
        (lambda f, t: ["ingest", "--tags", str(f / "missing.csv"), str(t / "out")], r".*missing\.csv"),
    ],
    "bench": [
        (lambda f, t: ["bench", "nothing"], r"unknown bench kind 'nothing'; known kinds: crf, "),
    ],
    "demo": [
        (lambda f, t: ["demo", "--out", str(t / "demo"), "--set", "demo.seeds=0"], r"config key 'demo.seeds': must be at least 1"),
    ],
}


@pytest.mark.parametrize("verb, case", [(verb, i) for verb, cases in CASES.items() for i in range(len(cases))],
                         ids=lambda value: str(value))
def test_wrong_input_is_one_line_naming_the_culprit(verb, case, files, tmp_path, monkeypatch, capsys):
    arguments, expected = CASES[verb][case]
    code, _, err = run(monkeypatch, capsys, *arguments(files, tmp_path))
    assert code == 2, err
    assert re.match(expected, error_line(err)), error_line(err)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no run folder left


def test_debug_shows_the_traceback(files, monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, "--debug", "config", "--config", str(files / "missing.yaml"))
    assert code == 2 and "Traceback" in err and "config file not found" in err
