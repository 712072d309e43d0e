"""`ray job submit` for real: a local Ray head on 127.0.0.1 (`ray start --head`, started from the
venv), a tiny stage-1 training submitted as a job, polled until SUCCEEDED, its run folder checked.

The head is stopped by signalling the process group of its own `ray start --block`, never with
`ray stop`, which stops every Ray on the machine (other people's sessions and tests included).
It runs with its own temp dir, its own ports and its own token (RAY_AUTH_TOKEN), so it touches
nothing of another Ray on the machine, and ~/.ray/auth_token is left alone.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tcam_ray.config import SynthConfig
from tcam_ray.data.synthetic import generate

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
TINY = SynthConfig(classes=2, videos=2, val_videos=1, test_videos=1, shots=2, frames=8, size=48, eval_stride=2)
START_TIMEOUT, JOB_TIMEOUT = 60, 300  # seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalHead:
    """A one-node Ray cluster of our own: `ray start --head --block` in its own process group."""

    def __init__(self, log: Path):
        # Unix socket paths under the temp dir must stay short (108 bytes): not under pytest's tmp_path.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tcr-", dir="/tmp"))
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env.pop("RAY_ADDRESS", None)  # the job's driver must find this head, not another cluster
        command = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                   f"--port={free_port()}", "--num-cpus=2", f"--temp-dir={self.temp_dir}",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                   f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                   f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                   f"--metrics-export-port={free_port()}"]
        self.log = log.open("w")
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """The `ray` command line against this head, as a user would type it."""
        return subprocess.run([str(VENV_BIN / "ray"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"ray start exited with {self.process.returncode}"
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):
                    return
            except urllib.error.HTTPError:  # it answers (with token auth, maybe 401): it is up
                return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"the Ray head's dashboard did not answer at {self.address} in {START_TIMEOUT} s")

    def stop(self) -> None:
        """SIGTERM to our `ray start --block` group (SIGKILL after 15 s), then any process left that
        runs from our temp dir, by pid."""
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):  # SIGTERM drains for up to 30 s
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        for pid in self.processes_of_this_head():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.processes_of_this_head() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def processes_of_this_head(self) -> list[int]:
        """Live processes whose command line names our temp dir (Linux /proc)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(self.temp_dir).encode() in cmdline and state != "Z":
                found.append(int(entry.name))
        return found


@pytest.fixture
def ray_head(tmp_path):
    head = LocalHead(tmp_path / "ray-head.log")
    try:
        head.wait_until_up()
        yield head
    finally:
        head.stop()
    assert head.processes_of_this_head() == []


# What `ray job status` says (in words) once a job has ended.
ENDED = {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}


def job_status(head: LocalHead, job_id: str) -> str:
    out = head.ray("job", "status", "--address", head.address, job_id)
    said = out.stdout + out.stderr
    ended = [status for words, status in ENDED.items() if f"Job '{job_id}' {words}" in said]
    if ended:
        return ended[0]
    running = re.search(rf"Status for job '{job_id}': (\w+)", said)
    assert running, f"cannot read the job's status from `ray job status`: {said[-2000:]}"
    return running.group(1)


def wait_for_job(head: LocalHead, job_id: str) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        status = job_status(head, job_id)
        if status in ENDED.values():
            return status
        time.sleep(2)
    head.ray("job", "stop", "--address", head.address, job_id)
    return f"still {status} after {JOB_TIMEOUT} s"


def test_ray_job_submit_runs_a_stage1_training_on_a_local_head(ray_head, tmp_path):
    data = tmp_path / "data"
    generate(TINY, data)
    config = tmp_path / "tiny-cam.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": {"root": str(data)},
        "input": {"crop_size": 32, "resize_size": 40, "batch_size": 4, "decode_batch_size": 16},
        "train": {"epochs": 2, "lr": 0.01, "keep_last": 1},
        "scale": {"num_workers": 1, "cpus_per_worker": 0.5},
        "eval": {"thresholds": 20},
        "run": {"root": str(tmp_path / "runs"), "name": "job"},
    }))
    job_id = f"tcam-ray-test-{secrets.token_hex(4)}"
    submitted = ray_head.ray("job", "submit", "--address", ray_head.address, "--submission-id", job_id, "--no-wait",
                             "--", "tcam-ray", "train", "--stage", "cam", "--config", str(config))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    status = wait_for_job(ray_head, job_id)
    logs = ray_head.ray("job", "logs", "--address", ray_head.address, job_id).stdout
    assert status == "SUCCEEDED", logs[-4000:]

    # The job's tcam-ray attached to this head (RAY_ADDRESS inside jobs): its Ray Train workers ran here.
    actors = ray_head.ray("list", "actors", "--address", ray_head.address, "--filter", "class_name=RayTrainWorker",
                          "--format", "json")
    assert actors.returncode == 0 and json.loads(actors.stdout), actors.stdout + actors.stderr

    run_dir = tmp_path / "runs" / "job"
    assert f"run folder: {run_dir}" in logs
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert all(0 <= r["corloc"] <= 100 for r in records if r["split"] == "val")
    assert (run_dir / "checkpoints" / "best-corloc" / "state.pt").exists()
    assert (run_dir / "report.json").exists()  # the best checkpoint's evaluation, as `tcam-ray train` does
    assert (run_dir / "ray").is_dir()  # Ray Train's storage: {run folder}/ray
