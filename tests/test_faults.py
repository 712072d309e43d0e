"""Faults on Ray, through the CLI as a user meets them: another Ray cluster on the machine, Ctrl-C, retries
exhausted, a corrupt frame met by a decode task. Also what listens on the network while 2 workers train.
Stops only the processes it started. A lost worker node: test_multinode.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tcam_ray.data import index_dataset

from .conftest import tiny_run_config, with_default_sigint

TCAM_RAY = str(Path(sys.executable).with_name("tcam-ray"))
RAY = str(Path(sys.executable).with_name("ray"))


def train_command(dataset_root, run_root, *overrides) -> list[str]:
    settings = [f"dataset.root={dataset_root}", f"run.root={run_root}", "run.name=run", "input.crop_size=32",
                "input.resize_size=40", "input.batch_size=4", "input.sampling=all", "eval.thresholds=20",
                "scale.num_workers=2", "scale.cpus_per_worker=0.5", *overrides]
    return [TCAM_RAY, "train", *[part for setting in settings for part in ("--set", setting)]]


def epochs_logged(run_dir: Path) -> list[tuple[int, str]]:
    return [(r["epoch"], r["split"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def wait_for(condition, timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- processes and sockets


def children_of(pid: int) -> set[int]:
    """`pid` and every process below it."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    family, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in family and child not in family:
                family.add(child)
                grew = True
    return family


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening_sockets() -> dict[str, tuple[str, int]]:
    """socket inode -> (address, port) of every listening TCP socket on the machine."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # kernel order per 32-bit word
            found[fields[9]] = (socket.inet_ntop(family, words), int(port, 16))
    return found


def listeners_of(pids: set[int]) -> set[tuple[str, int, str]]:
    """(address, port, command) of the listening sockets these processes hold."""
    sockets, held = listening_sockets(), set()
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            inode = link[len("socket:["):-1] if link.startswith("socket:[") else None
            if inode in sockets:
                held.add((*sockets[inode], command_line(pid)[:60]))
    return held


def is_loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


# --------------------------------------------------------------------------- a cluster of somebody else's


@pytest.fixture
def short_ray_tmp():
    """A RAY_TMPDIR of our own, short: Ray's unix sockets live under it (at most 107 characters)."""
    folder = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def foreign_ray_head(short_ray_tmp, tmp_path):
    """A `ray start` head whose address is in the default place for the processes given `env`
    (RAY_TMPDIR): a plain `ray.init()` there would join it. Only its own processes are stopped at the
    end (`ray stop` would stop every Ray on the machine)."""
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(short_ray_tmp), "TMPDIR": str(tmp_path / "tmp")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                              "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    session = (short_ray_tmp / "ray" / "session_latest").resolve()
    head = {pid for pid in children_of(1) if str(short_ray_tmp) in command_line(pid)}
    try:
        yield env, session
    finally:
        for pid in set().union(*(children_of(pid) for pid in head)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_two_workers_train_on_their_own_local_ray_listening_on_loopback(foreign_ray_head, dataset_root, tmp_path):
    """With another cluster's address in the default place, `tcam-ray train` (no --address) starts its own
    Ray, and its processes listen on loopback only (the DDP store too). (A worker lost mid-run:
    test_multinode.py loses a whole node.)"""
    env, foreign_session = foreign_ray_head
    run_dir = tmp_path / "runs" / "run"
    process = subprocess.Popen(train_command(dataset_root, tmp_path / "runs", "train.epochs=2"),
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listeners = set()
    try:
        while process.poll() is None:
            listeners.update(listeners_of(children_of(process.pid)))
            time.sleep(0.5)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stdout + stderr
    assert epochs_logged(run_dir) == [(e, s) for e in (1, 2) for s in ("train", "val")]
    assert not list(foreign_session.glob("logs/python-core-driver-*")), "attached to the other cluster"
    assert any("RayTrainWorker" in command for *_, command in listeners), listeners  # the DDP store was seen
    assert all(is_loopback(address) for address, *_ in listeners), sorted(listeners)


def test_ctrl_c_on_ray_then_retries_exhausted_say_how_to_resume(dataset_root, tmp_path):
    command = train_command(dataset_root, tmp_path, "train.epochs=30", "scale.max_failures=0")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=with_default_sigint)
    run_dir = tmp_path / "run"
    wait_for(lambda: (run_dir / "checkpoints" / "epoch-0001" / "meta.json").exists() or process.poll() is not None,
             what="epoch 1's checkpoint")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    interrupted = stderr.strip().splitlines()[-1]
    assert interrupted.startswith("error: interrupted; rerun the same command to resume after epoch ")
    after = int(interrupted.split("after epoch ")[1].split()[0])

    failing = train_command(dataset_root, tmp_path, "train.epochs=30", "scale.max_failures=0",
                            f"train.fail_at_epoch={after + 1}")
    result = subprocess.run(failing, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: training failed on worker rank 0: train.fail_at_epoch={after + 1}: failing once on purpose; rerun "
        f"the same command to resume after epoch {after} (its last checkpoint) (Ray's worker logs: ")


def test_a_corrupt_frame_met_by_a_decode_task_is_one_line_and_no_retry(dataset_root, tmp_path, short_ray_tmp):
    copy = tmp_path / "data"
    shutil.copytree(dataset_root, copy)
    cfg = tiny_run_config(copy, tmp_path, "dataset.probe_frames=first")
    train = index_dataset(cfg.dataset).split("train")
    broken = copy / train.filter(train["frame_idx"].to_numpy() > 0)["frame_id"][0].as_py()  # not probed
    broken.write_bytes(b"\xff\xd8 truncated jpeg")
    result = subprocess.run(train_command(copy, tmp_path, "dataset.probe_frames=first", "train.epochs=2",
                                          "scale.max_failures=3"), capture_output=True, text=True, timeout=600,
                            env={**os.environ, "RAY_TMPDIR": str(short_ray_tmp)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {broken}: cannot decode frame (corrupt or not an image)"
    decisions = " ".join(path.read_text(errors="replace") for path in short_ray_tmp.glob("ray/session_*/logs/train/*"))
    assert "[FailurePolicy] RAISE" in decisions and "[FailurePolicy] RETRY" not in decisions  # max_failures unused
