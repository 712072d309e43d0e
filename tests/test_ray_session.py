"""The embedded local Ray that `ray_session` starts (it must be the one that starts it: no
module-wide Ray here)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import ray

from tcam_ray.config import ScaleConfig
from tcam_ray.data.frames import DECODE_CPUS
from tcam_ray.train.trainer import ray_session


def test_decode_workers_outlive_a_pause_between_epochs():
    """Ray kills idle workers beyond its free CPUs after 1 s; ours keeps a decode slot and a spare
    per CPU, so an epoch after a validation or checkpoint pause does not start new processes."""
    @ray.remote(num_cpus=DECODE_CPUS)
    def decode_slot() -> int:
        time.sleep(3)  # long enough for all slots to hold a task at once
        return os.getpid()

    assert not ray.is_initialized(), "this test needs to start its own local Ray"
    with ray_session(ScaleConfig(local_cpus=2)):
        slots = int(2 / DECODE_CPUS)
        first = set(ray.get([decode_slot.remote() for _ in range(slots)]))
        time.sleep(2.5)
        second = set(ray.get([decode_slot.remote() for _ in range(slots)]))
    assert len(first) == slots
    assert second == first


def test_the_environment_is_as_before_once_the_session_ends(monkeypatch):
    """A notebook or a program that trains keeps its own environment: our Ray settings hold for the
    session only (the raylet's worker limit only while Ray starts), a value the user set stays, and
    what ray.init sets in the driver (PYTHONBREAKPOINT, RAY_AUTH_MODE, ...) goes with the session."""
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PRINT_PATCH", "1")  # the user's own choice
    before = dict(os.environ)
    assert not ray.is_initialized(), "this test needs to start its own local Ray"
    with ray_session(ScaleConfig(local_cpus=1)):
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        assert os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "1"
        assert "RAY_num_workers_soft_limit" not in os.environ
    assert dict(os.environ) == before


def test_the_local_ray_is_on_loopback_even_when_ray_was_imported_first():
    """Ray reads its loopback switch when it is imported: a program that imported Ray before the session (as
    `tcam-ray demo` does) still gets its local Ray on 127.0.0.1, not on the machine's network address."""
    program = ("import ray\n"  # before the session sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
               "from tcam_ray.config import ScaleConfig\n"
               "from tcam_ray.train.trainer import ray_session\n"
               "with ray_session(ScaleConfig(local_cpus=1)):\n"
               "    print(ray.util.get_node_ip_address(), ray.get_runtime_context().gcs_address)\n")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    shown = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    node, gcs = shown.stdout.split()
    assert node == "127.0.0.1" and gcs.startswith("127.0.0.1:"), shown.stdout
