"""Checkpoints and weights from elsewhere: a torch file holding a pickle payload never runs, and damaged
files are one error naming the file."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tcam_ray.bench.store import untrained_checkpoint
from tcam_ray.config import load
from tcam_ray.io import UnreadableFileError, file_sha256
from tcam_ray.models.weights import read_state_dict
from tcam_ray.train.checkpoints import CheckpointError, checkpoint_config, convert_checkpoint, load_state, read_meta


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


def forge_state_file(checkpoint, state) -> None:
    """Replace state.pt and record its true size and hash in meta.json, as a forger would."""
    state_file = checkpoint / "state.pt"
    torch.save(state, state_file)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta.update(state_bytes=state_file.stat().st_size, state_sha256=file_sha256(state_file))
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def test_the_payload_would_run_if_unpickled(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"model": OpensAFile(marker)}, tmp_path / "state.pt")
    torch.load(tmp_path / "state.pt", weights_only=False)
    assert marker.exists()  # so the tests below, which find no marker, can fail


def test_a_pickle_payload_in_the_state_file_is_refused_and_never_runs(checkpoint, tmp_path, cli):
    marker = tmp_path / "payload-ran"
    state_file = checkpoint / "state.pt"
    forge_state_file(checkpoint, {"model": OpensAFile(marker)})
    with pytest.raises(UnreadableFileError, match=f"{state_file}: refused"):
        load_state(checkpoint)
    result = cli("localize", str(checkpoint), str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and f"{state_file}: refused" in " ".join(result.stderr.split())
    assert not marker.exists()


def test_a_replaced_state_file_fails_its_checksum_before_it_is_read(checkpoint, tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"model": OpensAFile(marker)}, checkpoint / "state.pt")
    meta = json.loads((checkpoint / "meta.json").read_text())
    (checkpoint / "state.pt").write_bytes((checkpoint / "state.pt").read_bytes().ljust(meta["state_bytes"], b"\0"))
    with pytest.raises(CheckpointError, match=re.escape(f"{checkpoint / 'state.pt'}: checksum mismatch")):
        load_state(checkpoint)
    assert not marker.exists()


def test_a_pickle_payload_in_a_weights_file_is_refused_and_never_runs(tmp_path):
    marker, weights = tmp_path / "payload-ran", tmp_path / "encoder.pth"
    torch.save({"conv1.weight": torch.zeros(1), "hook": OpensAFile(marker)}, weights)
    with pytest.raises(UnreadableFileError, match=re.escape(f"{weights}: refused: it holds a Python object")):
        read_state_dict(weights)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [("empty", "empty (0 bytes)"), ("truncated", "truncated ("),
                                             ("text", "truncated (16 of")])
def test_a_damaged_state_file_is_one_error_naming_it(checkpoint, damage, message):
    state_file = checkpoint / "state.pt"
    whole = state_file.read_bytes()
    state_file.write_bytes({"empty": b"", "truncated": whole[: len(whole) // 2], "text": b"not a checkpoint"}[damage])
    with pytest.raises(UnreadableFileError, match=re.escape(f"{state_file}: {message}")):
        load_state(checkpoint)


def test_a_truncated_state_file_that_meta_json_agrees_with_is_still_one_error(checkpoint):
    state_file = checkpoint / "state.pt"
    half = state_file.read_bytes()[: state_file.stat().st_size // 2]
    state_file.write_bytes(half)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta.update(state_bytes=len(half), state_sha256=file_sha256(state_file))
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UnreadableFileError, match=re.escape(f"{state_file}: truncated or damaged")):
        load_state(checkpoint)


def test_a_folder_that_is_no_tcam_ray_checkpoint_says_so(checkpoint, tmp_path):
    (checkpoint / "meta.json").write_text(json.dumps({"epoch": 3}))
    with pytest.raises(CheckpointError, match=re.escape(f"{checkpoint / 'meta.json'}: not a tcam-ray checkpoint")):
        load_state(checkpoint)
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        read_meta(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a tcam-ray checkpoint \\(a file"):
        read_meta(checkpoint / "config.yaml")


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


def test_a_yaml_payload_in_a_checkpoint_or_config_file_never_runs(checkpoint, tmp_path, cli):
    marker = tmp_path / "payload-ran"
    payload = f"model: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n"
    (checkpoint / "config.yaml").write_text(payload)
    with pytest.raises(CheckpointError, match=re.escape(f"{checkpoint / 'config.yaml'}: damaged, not YAML")):
        checkpoint_config(checkpoint)
    (tmp_path / "evil.yaml").write_text(payload)
    result = cli("config", "--config", str(tmp_path / "evil.yaml"))
    assert result.returncode == 2 and f"{tmp_path / 'evil.yaml'}: not valid YAML" in " ".join(result.stderr.split())
    assert not marker.exists()


def make_old(checkpoint, state=None) -> None:
    """As a tcam-ray before checksums wrote it: no format, version, size or hash in meta.json."""
    if state is not None:
        torch.save(state, checkpoint / "state.pt")
    meta = json.loads((checkpoint / "meta.json").read_text())
    for key in ("format", "version", "state_bytes", "state_sha256"):
        meta.pop(key)
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def test_an_old_checkpoint_of_yours_is_converted_and_then_verifies(checkpoint, cli):
    make_old(checkpoint)
    with pytest.raises(CheckpointError, match=re.escape(f"`tcam-ray checkpoint convert {checkpoint}`")):
        load_state(checkpoint)
    converted = cli("checkpoint", "convert", str(checkpoint))
    assert converted.returncode == 0, converted.stderr
    verified = cli("checkpoint", "verify", str(checkpoint))
    assert verified.returncode == 0 and verified.stdout.startswith(f"ok {checkpoint}: stage cam"), verified.stderr


def test_an_old_state_file_that_needs_pickle_converts_only_with_trust(checkpoint, cli):
    model = load_state(checkpoint)["model"]
    make_old(checkpoint, {"model": model, "epoch": np.int64(3), "best": {"top1": np.float32(50.0)}})
    with pytest.raises(UnreadableFileError, match=re.escape(f"`tcam-ray checkpoint convert {checkpoint} --trust`")):
        convert_checkpoint(checkpoint)
    refused = cli("checkpoint", "convert", str(checkpoint))
    assert refused.returncode == 2 and "refused: it holds a Python object" in refused.stderr
    converted = cli("checkpoint", "convert", str(checkpoint), "--trust")
    assert converted.returncode == 0, converted.stderr
    state = load_state(checkpoint)
    assert state["epoch"] == 3 and type(state["epoch"]) is int and state["best"] == {"top1": 50.0}
    damaged = cli("checkpoint", "verify", str(checkpoint / "state.pt"))
    assert damaged.returncode == 2 and "not a tcam-ray checkpoint (a file" in damaged.stderr
