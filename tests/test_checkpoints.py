"""Checkpoints and weights from elsewhere: a torch file holding a pickle payload never runs, and damaged
files are one error naming the file."""
from __future__ import annotations

import re

import pytest
import torch

from tcam_ray.bench.store import untrained_checkpoint
from tcam_ray.config import load
from tcam_ray.io import UnreadableFileError
from tcam_ray.models.weights import read_state_dict
from tcam_ray.train.checkpoints import CheckpointError, checkpoint_config, load_state, read_meta


class OpensAFile:
    """Unpickling this calls open(path, "w"): a side effect to watch for."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def checkpoint(tmp_path):
    cfg = load(overrides=["model.arch=resnet18"])
    return untrained_checkpoint(cfg, ["cat", "dog"], tmp_path / "checkpoint")


def test_the_checkpoints_tcam_ray_writes_hold_only_tensors_and_plain_values(checkpoint):
    state = load_state(checkpoint)
    assert state["model"] and all(isinstance(value, torch.Tensor) for value in state["model"].values())
    assert read_meta(checkpoint)["classes"] == ["cat", "dog"]
    assert checkpoint_config(checkpoint).model.arch == "resnet18"


def test_a_pickle_payload_in_the_state_file_is_refused_and_never_runs(checkpoint, tmp_path, cli):
    marker = tmp_path / "payload-ran"
    state_file = checkpoint / "state.pt"
    torch.save({"model": OpensAFile(marker)}, state_file)
    with pytest.raises(UnreadableFileError, match=f"{state_file}: refused"):
        load_state(checkpoint)
    result = cli("localize", str(checkpoint), str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and f"{state_file}: refused" in " ".join(result.stderr.split())
    assert not marker.exists()


def test_a_pickle_payload_in_a_weights_file_is_refused_and_never_runs(tmp_path):
    marker, weights = tmp_path / "payload-ran", tmp_path / "encoder.pth"
    torch.save({"conv1.weight": torch.zeros(1), "hook": OpensAFile(marker)}, weights)
    with pytest.raises(UnreadableFileError, match=re.escape(f"{weights}: refused: it holds a Python object")):
        read_state_dict(weights)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [("empty", "empty (0 bytes)"), ("truncated", "truncated or damaged"),
                                             ("text", "truncated or damaged")])
def test_a_damaged_state_file_is_one_error_naming_it(checkpoint, damage, message):
    state_file = checkpoint / "state.pt"
    whole = state_file.read_bytes()
    state_file.write_bytes({"empty": b"", "truncated": whole[: len(whole) // 2], "text": b"not a checkpoint"}[damage])
    with pytest.raises(UnreadableFileError, match=re.escape(f"{state_file}: {message}")):
        load_state(checkpoint)


def test_damaged_meta_and_config_files_name_the_file(checkpoint):
    (checkpoint / "meta.json").write_text('{"stage": "cam",')
    with pytest.raises(CheckpointError, match=f"{checkpoint / 'meta.json'}: damaged, not JSON"):
        read_meta(checkpoint)
    (checkpoint / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match=f"{checkpoint / 'config.yaml'}: damaged, not YAML"):
        checkpoint_config(checkpoint)
    (checkpoint / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="is not a tcam-ray checkpoint \\(no config.yaml\\)"):
        checkpoint_config(checkpoint)
