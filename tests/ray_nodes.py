"""A multi-node Ray cluster of our own on 127.0.0.1: Ray's own harness (`ray.cluster_utils.Cluster`), a head
with the dashboard (for `ray job submit` and the state API) and worker nodes, each with its own raylet
and object store, all on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: `ray start` refuses a worker node
under it, the harness does not).

The harness runs in a process of its own (`python tests/ray_nodes.py`, driven by `LocalCluster` through
its stdin and stdout), with token authentication on (RAY_AUTH_TOKEN of its own, which Ray reads when it is
imported: the test process's Ray must not see it), its own temp dir and ports, so it touches nothing of
another Ray on the machine, and ~/.ray/auth_token is left alone. Losing a node is `lose_worker` (SIGKILL
to its raylet and its other processes, nothing drained). Only the processes it started are stopped, never
with `ray stop`, which stops every Ray on the machine; the harness also stops them if the tests die (its
stdin closes).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 200 * 2**20  # per node: the tests' frames are tiny
START_TIMEOUT = 180  # seconds for the head, or a node, to be up


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_ports() -> dict:
    """Ports of a node's agents, picked here: their defaults are fixed numbers, which another node (or
    another Ray on the machine) already holds."""
    return dict(dashboard_agent_listen_port=free_port(), metrics_agent_port=free_port(),
                runtime_env_agent_port=free_port(), metrics_export_port=free_port())


class LocalCluster:
    """A head and `workers` worker nodes of `cpus` logical CPUs each; `env` reaches it (its token, loopback,
    no other RAY_ADDRESS) for the commands a test runs against it."""

    def __init__(self, log: Path, workers: int = 1, cpus: int = 2):
        # Unix socket paths under the temp dir must stay short (108 bytes): not under pytest's tmp_path.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tcr-", dir="/tmp"))
        (self.temp_dir / "ray").mkdir()  # RAY_TMPDIR's ray/ (below)
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    # Ray's "current cluster" file goes here, not to /tmp/ray, where a plain ray.init() of
                    # someone else's would find it and join this cluster
                    "RAY_TMPDIR": str(self.temp_dir)}
        self.env.pop("RAY_ADDRESS", None)  # a job's driver must find this cluster, not another
        self.log = log.open("w")
        self.harness = subprocess.Popen([sys.executable, __file__, str(self.temp_dir), str(workers), str(cpus)],
                                        env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True)
        try:
            started = self.answer()
        except BaseException:
            self.stop()
            raise
        self.address, self.dashboard = started["address"], started["dashboard"]
        self.head_node_id, self.worker_node_ids = started["head"], started["workers"]

    def answer(self) -> dict:
        line = self.harness.stdout.readline()
        if not line:
            self.harness.wait(10)
            raise RuntimeError(f"the cluster harness ended (exit code {self.harness.returncode}); see {self.log.name}")
        return json.loads(line)

    def command(self, *words: str) -> dict:
        self.harness.stdin.write(" ".join(words) + "\n")
        self.harness.stdin.flush()
        return self.answer()

    def add_worker(self) -> str:
        node_id = self.command("add")["node_id"]
        self.worker_node_ids.append(node_id)
        return node_id

    def lose_worker(self, node_id: str) -> None:
        """The node is gone, as when its machine dies."""
        self.command("lose", node_id)
        self.worker_node_ids.remove(node_id)

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """The `ray` command line against this cluster, as a user would type it."""
        return subprocess.run([str(VENV_BIN / "ray"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def state(self, kind: str, *filters: str) -> list[dict]:
        """`ray list KIND` (tasks, actors, nodes) through the head's dashboard, as JSON rows."""
        args = ["list", kind, "--address", self.dashboard, "--format", "json", "--limit", "10000"]
        listed = self.ray(*args, *[arg for item in filters for arg in ("--filter", item)])
        assert listed.returncode == 0, listed.stdout + listed.stderr
        return json.loads(listed.stdout)

    def stop(self) -> None:
        try:
            if self.harness.poll() is None:
                self.harness.stdin.close()  # the harness shuts the cluster down and ends
                self.harness.wait(60)
        finally:
            if self.harness.poll() is None:
                self.harness.kill()
            self.log.close()
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def serve(temp_dir: str, workers: int, cpus: int) -> None:
    """The harness: start the cluster, say where it is (a JSON line), then take `add` and `lose NODE_ID`
    lines on stdin, answering each with a JSON line, until stdin closes."""
    from ray._private.utils import write_ray_address
    from ray.cluster_utils import Cluster

    def add_node():
        node = cluster.add_node(num_cpus=cpus, object_store_memory=OBJECT_STORE_BYTES, **node_ports())
        cluster.wait_for_nodes(START_TIMEOUT)
        return node

    def say(item: dict) -> None:
        print(json.dumps(item), flush=True)

    dashboard_port = free_port()
    cluster = Cluster(initialize_head=True, connect=False, shutdown_at_exit=True, head_node_args=dict(
        num_cpus=cpus, object_store_memory=OBJECT_STORE_BYTES, temp_dir=temp_dir, include_dashboard=True,
        dashboard_host="127.0.0.1", dashboard_port=dashboard_port, ray_client_server_port=free_port(), **node_ports()))
    # Where a job's driver looks for the cluster's address (its RAY_ADDRESS is "auto" in the head's temp dir):
    # without it, Ray picks any GCS process running on the machine.
    write_ray_address(cluster.address, temp_dir)
    try:
        nodes = {}
        for _ in range(workers):
            node = add_node()
            nodes[node.node_id] = node
        say({"address": cluster.address, "dashboard": f"http://127.0.0.1:{dashboard_port}",
             "head": cluster.head_node.node_id, "workers": list(nodes)})
        for line in sys.stdin:
            verb, *args = line.split()
            if verb == "add":
                node = add_node()
                nodes[node.node_id] = node
                say({"node_id": node.node_id})
            elif verb == "lose":
                cluster.remove_node(nodes.pop(args[0]), allow_graceful=False)
                say({"lost": args[0]})
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
