"""Scale-out on a real multi-node Ray cluster (tests/ray_nodes.py: a head and a worker node on 127.0.0.1,
each with its own raylet and object store), driven as a user drives one: `ray job submit` and `tcam-ray
... --address`. Stage 1 and stage 2 run a worker on each node (scale.placement=spread) and both nodes
decode frames; `tcam-ray cams` has its actors on both nodes; a sweep's trials run on both nodes; losing
the worker node mid-run costs nothing with scale.max_failures (the group restarts on the head from the last
checkpoint, every epoch logged once). The tests follow one another (the store comes from stage 1's
checkpoint, the node is lost last), as the walkthrough in clusters/README.md does."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .ray_nodes import LocalCluster

pytestmark = pytest.mark.slow

TCAM_RAY = str(Path(sys.executable).with_name("tcam-ray"))
JOB_TIMEOUT = 600  # seconds
TINY = {
    "input": {"crop_size": 32, "resize_size": 40, "batch_size": 4, "decode_batch_size": 16},
    "train": {"epochs": 2, "lr": 0.01, "keep_last": 1},
    "scale": {"num_workers": 2, "cpus_per_worker": 0.5, "placement": "spread"},
    "eval": {"thresholds": 20},
    "cam": {"actors": 2},
}
DECODE_TASK = "MapBatches(decode_batch)"  # Ray Data's decode tasks (data/pipeline.py)
TRAIN_SHOTS = 8  # the tiny dataset's (conftest.tiny_synth): a frame of each an epoch, 4 by each worker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster") / "harness.log", workers=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, dataset_root):
    """What the tests hand on (stage 1's checkpoint, the CAM store), and the config every command reads: the
    "shared storage" of a real cluster is this machine's disk."""
    folder = tmp_path_factory.mktemp("shared")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "dataset": {"root": str(dataset_root)}, "run": {"root": str(folder / "runs")}}))
    return {"folder": folder, "config": config}


def driver_jobs(cluster: LocalCluster) -> set[str]:
    return {job["job_id"] for job in cluster.state("jobs")}


def tcam_ray(cluster: LocalCluster, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`tcam-ray ARGS --address HEAD`, and the Ray job ids of the drivers it ran."""
    before = driver_jobs(cluster)
    done = subprocess.run([TCAM_RAY, *args, "--address", cluster.address], env=cluster.env, capture_output=True,
                          text=True, timeout=JOB_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, driver_jobs(cluster) - before


def nodes_of(cluster: LocalCluster, kind: str, name_field: str, name: str, jobs: set[str]) -> set[str]:
    """The nodes where tasks (or actors) named `name` of these jobs ran."""
    return {row["node_id"] for row in cluster.state(kind) if row[name_field] == name and row["job_id"] in jobs
            and row["node_id"]}


def placements(run_dir: Path) -> list[list[dict]]:
    """workers.jsonl: for each worker group that started, where each rank ran."""
    return [json.loads(line)["workers"] for line in (run_dir / "workers.jsonl").read_text().splitlines()]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def epochs_logged(run_dir: Path) -> list[tuple[int, str]]:
    return [(r["epoch"], r["split"]) for r in records(run_dir)]


def trained_frames(run_dir: Path) -> list[int]:
    return [r["samples"] for r in records(run_dir) if r["split"] == "train"]


def all_nodes(cluster: LocalCluster) -> set[str]:
    return {cluster.head_node_id, *cluster.worker_node_ids}


def test_a_submitted_stage1_job_trains_with_a_worker_on_each_node(cluster, shared):
    job_id = f"tcam-ray-test-{secrets.token_hex(4)}"
    submitted = cluster.ray("job", "submit", "--address", cluster.dashboard, "--submission-id", job_id, "--no-wait",
                            "--", TCAM_RAY, "train", "--stage", "cam", "--config", str(shared["config"]),
                            "--set", "run.name=cam")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    deadline = time.monotonic() + JOB_TIMEOUT
    while (status := cluster.ray("job", "status", "--address", cluster.dashboard, job_id).stdout) and \
            not any(word in status for word in ("succeeded", "failed", "was stopped")):
        assert time.monotonic() < deadline, f"the job did not end in {JOB_TIMEOUT} s: {status}"
        time.sleep(2)
    logs = cluster.ray("job", "logs", "--address", cluster.dashboard, job_id).stdout
    assert "succeeded" in status, logs[:6000]

    run_dir = shared["folder"] / "runs" / "cam"
    (workers,) = placements(run_dir)  # one worker group, never restarted
    assert [w["rank"] for w in workers] == [0, 1]
    assert {w["node_id"] for w in workers} == all_nodes(cluster)  # a rank on each node
    assert "workers: 2 on 2 nodes" in logs
    (job,) = [j for j in cluster.state("jobs") if j.get("submission_id") == job_id]
    assert nodes_of(cluster, "tasks", "name", DECODE_TASK, {job["job_id"]}) == all_nodes(cluster)
    assert epochs_logged(run_dir) == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert trained_frames(run_dir) == [TRAIN_SHOTS] * 2  # each worker its half of the shards
    shared["checkpoint"] = run_dir / "checkpoints" / "best-top1"
    assert (shared["checkpoint"] / "state.pt").exists()


def test_the_cam_store_is_filled_by_actors_on_both_nodes(cluster, shared):
    store = shared["folder"] / "cams.parquet"
    done, jobs = tcam_ray(cluster, "cams", "--checkpoint", str(shared["checkpoint"]), "--out", str(store),
                          "--config", str(shared["config"]))
    predictors = {row["node_id"] for row in cluster.state("actors") if "CamPredictor" in row["class_name"]
                  and row["job_id"] in jobs}
    assert predictors == all_nodes(cluster), done.stdout
    assert store.stat().st_size > 0
    shared["store"] = store


def test_stage2_trains_with_a_worker_on_each_node(cluster, shared):
    done, jobs = tcam_ray(cluster, "train", "--stage", "tcam", "--config", str(shared["config"]),
                          "--set", "run.name=tcam", "--set", f"tcam.cams={shared['store']}")
    run_dir = shared["folder"] / "runs" / "tcam"
    (workers,) = placements(run_dir)
    assert {w["node_id"] for w in workers} == all_nodes(cluster)
    assert "workers: 2 on 2 nodes" in done.stdout
    assert epochs_logged(run_dir) == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert trained_frames(run_dir) == [TRAIN_SHOTS] * 2


def test_a_sweeps_trials_run_on_both_nodes(cluster, shared):
    """Each node holds one trial's worker (1.1 CPUs of 2, with the trials' drivers and decode tasks beside
    it), so the two trials that run at once take one node each."""
    folder = shared["folder"]
    (folder / "sweep.yaml").write_text(yaml.safe_dump({
        "config": str(shared["config"]), "stage": "cam", "space": {"train.lr": {"grid": [0.01, 0.02]}},
        "asha": {"max_t": 1, "grace_period": 1}}))
    done, _ = tcam_ray(cluster, "tune", "--config", str(folder / "sweep.yaml"), "--set", "run.name=sweep",
                       "--set", "scale.num_workers=1", "--set", "scale.cpus_per_worker=1.1")
    assert "2 at once" in done.stdout
    trials = sorted((folder / "runs" / "sweep" / "trials").iterdir())
    assert len(trials) == 2
    nodes = [{w["node_id"] for group in placements(trial) for w in group} for trial in trials]
    assert set().union(*nodes) == all_nodes(cluster), nodes
    assert all(epochs_logged(trial) == [(1, "train"), (1, "val")] for trial in trials)


def test_losing_a_worker_node_mid_run_costs_nothing(cluster, shared):
    """SIGKILL to every process of the worker node once epoch 1's checkpoint exists: with
    scale.max_failures=1 the worker group starts again on the head from that checkpoint and the run ends
    with every epoch logged once."""
    run_dir = shared["folder"] / "runs" / "lost"
    command = [TCAM_RAY, "train", "--stage", "cam", "--config", str(shared["config"]), "--address", cluster.address,
               "--set", "run.name=lost", "--set", "train.epochs=3", "--set", "scale.max_failures=1"]
    process = subprocess.Popen(command, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (run_dir / "checkpoints" / "epoch-0001" / "meta.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint of epoch 1"
            time.sleep(0.2)
        (lost,) = cluster.worker_node_ids
        cluster.lose_worker(lost)
        stdout, stderr = process.communicate(timeout=JOB_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    first, again = placements(run_dir)
    assert lost in {w["node_id"] for w in first}
    assert {w["node_id"] for w in again} == {cluster.head_node_id}  # what is left
    assert epochs_logged(run_dir) == [(e, s) for e in (1, 2, 3) for s in ("train", "val")]
    assert "workers: 2 on 1 node" in stdout
    # the restarted group read the run folder's checkpoint: Ray keeps no copy of the model
    assert not [path for path in (run_dir / "ray").glob("attempt-*/checkpoint_*") if path.is_dir()]
