"""Nothing finished is lost, and a run resumes only as itself: in-process trainings (no Ray) killed while
they write a checkpoint or copy a best one, damaged checkpoints passed over, changed settings refused, a
full or read-only run folder, Ctrl-C."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from tcam_ray.config import ConfigError, SynthConfig
from tcam_ray.data import index_dataset
from tcam_ray.data.synthetic import generate
from tcam_ray.train.checkpoints import check_checkpoint, read_meta
from tcam_ray.train.resume import check_resume
from tcam_ray.train.trainer import run_training

from .conftest import REPO, tiny_run_config, with_default_sigint


def config(dataset_root, run_root, *overrides):
    return tiny_run_config(dataset_root, run_root, "train.epochs=2", *overrides)


def epochs_logged(run_dir) -> list[tuple[int, str]]:
    return [(r["epoch"], r["split"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def every_epoch_once(epochs: int) -> list[tuple[int, str]]:
    return [(epoch, split) for epoch in range(1, epochs + 1) for split in ("train", "val")]


def run_killed_in_process(dataset_root, run_root, kill_when: str) -> subprocess.CompletedProcess:
    """Train in a child process that SIGKILLs itself at the point `kill_when` sets up (code run first)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.conftest import tiny_run_config
        from tcam_ray.train import checkpoints
        from tcam_ray.train.trainer import run_training
        def die():
            os.kill(os.getpid(), signal.SIGKILL)
        {textwrap.indent(textwrap.dedent(kill_when), "        ").strip()}
        run_training(tiny_run_config({str(dataset_root)!r}, {str(run_root)!r}, "train.epochs=3"), out=lambda line: None)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def test_killed_while_copying_a_best_checkpoint_the_rerun_loses_no_epoch(dataset_root, tmp_path):
    """Epoch 1 (the first, so it improves every best) is killed while its best-top1 copy is made: its lines
    are on the disk before its checkpoint, and the copy cut short is made again."""
    killed = run_killed_in_process(dataset_root, tmp_path, """
        copy = checkpoints.CheckpointKeeper.save_best
        def save_best(self, name, source):
            if name == "top1":
                tmp = self.folder / ".best-top1.tmp-1"
                tmp.mkdir()
                die()
            return copy(self, name, source)
        checkpoints.CheckpointKeeper.save_best = save_best
    """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = tmp_path / "run"
    assert epochs_logged(run_dir) == every_epoch_once(1)
    assert not (run_dir / "checkpoints" / "best-top1").exists()
    result = run_training(config(dataset_root, tmp_path, "train.epochs=3"), out=lambda line: None)
    assert epochs_logged(run_dir) == every_epoch_once(3)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best_top1_epoch = max((r for r in records if r["split"] == "val"), key=lambda r: (r["top1"], -r["epoch"]))["epoch"]
    assert read_meta(result.run_dir / "checkpoints" / "best-top1")["epoch"] == best_top1_epoch
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers removed


def test_killed_while_writing_a_checkpoint_the_rerun_resumes_from_a_whole_one(dataset_root, tmp_path):
    killed = run_killed_in_process(dataset_root, tmp_path, """
        import torch
        save = torch.save
        def half_then_die(state, handle):
            if state["epoch"] == 2:
                handle.write(b"PK" * 1000)
                handle.flush()
                die()
            save(state, handle)
        torch.save = half_then_die
    """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = tmp_path / "run"
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers and leftovers[0].startswith(".epoch-0002.tmp-")  # the half-written one, never renamed
    lines = []
    run_training(config(dataset_root, tmp_path, "train.epochs=3"), out=lines.append)
    assert f"resuming {run_dir} after epoch 1 (epoch-0001)" in lines
    assert epochs_logged(run_dir) == every_epoch_once(3)  # epoch 2's lines of the killed run: cut, trained again


def test_a_damaged_last_checkpoint_is_passed_over_saying_so(dataset_root, tmp_path):
    """keep_last=1: the newest whole checkpoint older than the damaged epoch-0002 is a best-* copy."""
    first = run_training(config(dataset_root, tmp_path), out=lambda line: None)
    state = first.last / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    bests = sorted(p for p in (first.run_dir / "checkpoints").iterdir() if p.name.startswith("best-"))
    newest = max(bests, key=lambda p: read_meta(p)["epoch"])  # the first by name among equals
    expected = f"resuming {first.run_dir} after epoch {read_meta(newest)['epoch']} ({newest.name})"
    lines = []
    run_training(config(dataset_root, tmp_path, "train.epochs=3"), out=lines.append)
    assert lines[0].startswith(f"passing over a damaged checkpoint: {state}: truncated (1000 of ")
    assert lines[1] == expected
    assert epochs_logged(first.run_dir) == every_epoch_once(3)
    check_checkpoint(first.run_dir / "checkpoints" / "epoch-0003")


def test_a_run_resumes_only_with_the_settings_it_started_with(dataset_root, tmp_path):
    run_training(config(dataset_root, tmp_path, "train.epochs=1"), out=lambda line: None)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"{run_dir} was started with train.lr=0.01 \(now 0.5\): a run resumes "
                                          "only with the settings it started with"):
        run_training(config(dataset_root, tmp_path, "train.lr=0.5"))
    with pytest.raises(ConfigError, match=r"model.layer3_stride=2 \(now 1\)"):
        run_training(config(dataset_root, tmp_path, "model.layer3_stride=1"))
    other = tmp_path / "other-data"
    generate(SynthConfig(classes=2, videos=1, val_videos=1, test_videos=1, shots=2, frames=8, size=48, seed=3), other)
    with pytest.raises(ConfigError, match=rf"{run_dir} was trained on dataset fingerprint \w+, but {other} has "
                                          r"fingerprint \w+ \(other frames, labels or boxes\)"):
        run_training(config(other, tmp_path))
    index = index_dataset(config(dataset_root, tmp_path).dataset)
    with pytest.raises(ConfigError, match=rf"{run_dir} holds a stage-cam run, not stage tcam"):
        check_resume(run_dir / "checkpoints" / "epoch-0001", config(dataset_root, tmp_path), "tcam", index)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 0.01  # refused runs wrote nothing
    moved = tmp_path / "moved-data"
    shutil.copytree(dataset_root, moved)  # same dataset elsewhere, more epochs: that is the same run
    resumed = run_training(config(moved, tmp_path, "train.epochs=2"), out=lambda line: None)
    assert resumed.metrics["epoch"] == 2 and epochs_logged(run_dir) == every_epoch_once(2)


def train_cli_on_tmpfs(mount_options: str, dataset_root, tmp_path) -> tuple[subprocess.CompletedProcess, str, str]:
    """`tcam-ray train` (in-process, 1 epoch) into a run root that is a tmpfs mounted with `mount_options`, in a
    mount namespace of its own (a user namespace too when not root); (result, the temporary files left in the
    run root, its metrics.jsonl), read before the namespace and its tmpfs go."""
    runs = tmp_path / "mounted"
    runs.mkdir()
    overrides = [f"dataset.root={dataset_root}", f"run.root={runs}", "run.name=run", "input.crop_size=32",
                 "input.resize_size=40", "input.batch_size=4", "scale.num_workers=0", "train.epochs=1",
                 "eval.thresholds=20"]
    tcam_ray = shutil.which("tcam-ray", path=os.path.dirname(sys.executable))
    script = (f'mount -t tmpfs -o {mount_options} tmpfs "{runs}" || exit 99; "$0" "$@"; status=$?; '
              f'echo "::left"; find "{runs}" -name "*.tmp-*"; echo "::metrics"; cat "{runs}/run/metrics.jsonl" 2>/dev/null; '
              'exit $status')
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    result = subprocess.run([*unshare, "sh", "-c", script, tcam_ray, "train",
                             *[part for key in overrides for part in ("--set", key)]], capture_output=True, text=True)
    _, _, after = result.stdout.partition("::left\n")
    left, _, metrics = after.partition("::metrics\n")
    return result, left.strip(), metrics


def test_a_full_disk_is_one_line_naming_the_path_and_errno(dataset_root, tmp_path):
    """A 4 MB run folder holds the config, the frame index and epoch 1's lines, not the checkpoint."""
    result, left, metrics = train_cli_on_tmpfs("size=4m", dataset_root, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert error.startswith(f"error: {tmp_path / 'mounted' / 'run' / 'checkpoints'}/")
    assert error.endswith("cannot write (ENOSPC: No space left on device)")
    assert left == ""  # the half-written checkpoint folder is gone
    assert [json.loads(line)["split"] for line in metrics.splitlines()] == ["train", "val"]  # on the disk first


def test_a_read_only_run_folder_is_one_line_naming_it(dataset_root, tmp_path):
    result, _, _ = train_cli_on_tmpfs("ro", dataset_root, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'mounted' / 'run'}: cannot write "
                                                      "(EROFS: Read-only file system)")


def test_ctrl_c_says_how_to_resume(dataset_root, tmp_path):
    tcam_ray = shutil.which("tcam-ray", path=os.path.dirname(sys.executable))
    overrides = [f"dataset.root={dataset_root}", f"run.root={tmp_path}", "run.name=run", "input.crop_size=32",
                 "input.resize_size=40", "input.batch_size=4", "scale.num_workers=0", "train.epochs=50",
                 "input.sampling=all", "eval.thresholds=20"]
    process = subprocess.Popen([tcam_ray, "train", *[part for key in overrides for part in ("--set", key)]],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=with_default_sigint)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and '"split": "val"' in metrics.read_text()):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: interrupted; rerun the same command to resume after epoch ")
    epoch = int(last_line.split("after epoch ")[1].split()[0])
    assert epoch >= 1 and check_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch-{epoch:04d}")["epoch"] == epoch
