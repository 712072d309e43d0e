"""Sweep state is pickled Python: `tcam-ray tune` resumes only sweep folders that this user's tcam-ray
started (an owner marker under the user's key) and refuses any other before Ray starts, without
loading a byte of Tune's state. Every file that Tune unpickles on resume carries a payload here."""
from __future__ import annotations

import json
import pickle
import re
import stat
from pathlib import Path

import pytest

from tcam_ray.config import ConfigError
from tcam_ray.tune import trust
from tcam_ray.tune.sweep import load_sweep
from tcam_ray.tune.tuner import prepare_sweep_folder, run_sweep

from .test_tune import TINY_TRAINING, sweep_files

SESSION = "2026-01-01_00-00-00"
# Tune's experiment folder: each file Ray 2.60 unpickles when a sweep resumes (and how it loads it).
PLANTED = {
    "tuner.pkl": "pickle",  # Tuner.restore
    f"experiment_state-{SESSION}.json": "cloudpickle in JSON",  # ExperimentAnalysis, the restored fit
    f"basic-variant-state-{SESSION}.json": "pickle",  # the restored fit: the search algorithm
    f"callback-states-{SESSION}.pkl": "pickle",  # the restored fit: callbacks
    "t_00000/error.pkl": "pickle",  # the fit's results: an errored trial's exception
}


class Payload:
    """Unpickled, it creates the file `path`: proof that loading ran code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(autouse=True)
def own_key(tmp_path, monkeypatch) -> Path:
    """This user's key lives in the test's folder; the real home is never read or written."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "keys" / "mine"))
    return tmp_path / "keys" / "mine"


def received_sweep(tmp_path: Path):
    """A sweep file of this user's, and at its run.name a sweep folder from someone else whose Tune state holds
    payloads; returns (sweep file, sweep folder, folder where payloads leave their witness files)."""
    training = {**TINY_TRAINING, "run": {"root": str(tmp_path / "runs"), "name": "received"}}
    sweep_file = sweep_files(tmp_path, training=training)
    sweep_dir = tmp_path / "runs" / "received"
    prepare_sweep_folder(load_sweep(sweep_file), sweep_dir)  # the same sweep: only Tune's state is foreign
    witnesses = tmp_path / "witnesses"
    witnesses.mkdir()
    experiment = sweep_dir / "ray" / "tune"
    for name, how in PLANTED.items():
        path = experiment / name
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = pickle.dumps(Payload(witnesses / Path(name).name))
        if how == "pickle":
            path.write_bytes(payload)
        else:  # what TuneFunctionEncoder writes for a value JSON cannot hold
            blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
            path.write_text(json.dumps({"runner_data": blob, "trial_data": [], "stats": {}}))
    return sweep_file, sweep_dir, witnesses


def ran(witnesses: Path) -> list[str]:
    return sorted(path.name for path in witnesses.iterdir())


def test_the_planted_payloads_run_when_tune_loads_them(tmp_path):
    """Without the check the test would fail: Tune's own loaders run every payload (no Ray needed)."""
    from ray import cloudpickle, tune
    from ray.tune.utils.util import _load_newest_checkpoint

    _, sweep_dir, witnesses = received_sweep(tmp_path)
    experiment = sweep_dir / "ray" / "tune"
    assert tune.Tuner.can_restore(str(experiment)) and ran(witnesses) == []  # it only looks for tuner.pkl
    with pytest.raises(Exception):
        tune.Tuner.restore(str(experiment), trainable=lambda config: None)
    tune.ExperimentAnalysis(str(experiment))
    for pattern in ("basic-variant-state-*.json", "callback-states-*.pkl"):
        _load_newest_checkpoint(str(experiment), pattern)
    cloudpickle.loads((experiment / "t_00000" / "error.pkl").read_bytes())
    assert ran(witnesses) == sorted(Path(name).name for name in PLANTED)


def test_tune_refuses_a_sweep_folder_it_did_not_start_before_ray_starts(cli, tmp_path):
    sweep_file, sweep_dir, witnesses = received_sweep(tmp_path)
    result = cli("tune", "--config", str(sweep_file))
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    message = result.stderr.strip()
    assert f"{sweep_dir}: not resuming this sweep" in message and "pickled Python that could run code" in message
    assert "has no owner marker (.tcam-ray-owner.json)" in message
    assert f"under this user's key ({tmp_path / 'keys' / 'mine'})" in message
    assert "copy that key file there" in message and "choose another run.name" in message
    assert ran(witnesses) == [] and not (sweep_dir / trust.MARKER).exists()
    assert "Ray" not in result.stdout  # no cluster was started


def test_run_sweep_refuses_it_too_and_names_the_folder(tmp_path):
    import ray

    sweep_file, sweep_dir, witnesses = received_sweep(tmp_path)
    said = []
    expected = (f"{sweep_dir}: not resuming this sweep: its Tune state ({sweep_dir}/ray/tune) is pickled Python that "
                "could run code when loaded, and it has no owner marker")
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}"):
        run_sweep(load_sweep(sweep_file), say=said.append)
    assert ran(witnesses) == [] and said == [] and not ray.is_initialized()


def test_a_marker_made_with_another_key_is_refused(tmp_path, monkeypatch, own_key):
    sweep_file, sweep_dir, witnesses = received_sweep(tmp_path)
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "keys" / "theirs"))
    trust.mark_owner(sweep_dir)  # a well-formed marker, but under someone else's key
    monkeypatch.setenv(trust.KEY_ENV, str(own_key))
    trust.user_key()
    with pytest.raises(ConfigError, match=rf"{re.escape(str(sweep_dir))}: .*its owner marker was made with another "
                       rf"key, so it was not started by tcam-ray under this user's key \({re.escape(str(own_key))}\)"):
        run_sweep(load_sweep(sweep_file))
    (sweep_dir / trust.MARKER).write_text('{"nonce": "00", "hmac_sha256": "' + "0" * 64 + '"}')
    with pytest.raises(ConfigError, match=r"its owner marker was made with another key"):
        run_sweep(load_sweep(sweep_file))
    (sweep_dir / trust.MARKER).write_text("not json")
    with pytest.raises(ConfigError, match=r"its owner marker .tcam-ray-owner.json is unreadable"):
        run_sweep(load_sweep(sweep_file))
    assert ran(witnesses) == []


def test_own_sweeps_pass_and_trust_sweep_state_marks_an_old_one(tmp_path):
    _, sweep_dir, witnesses = received_sweep(tmp_path)
    experiment = str(sweep_dir / "ray" / "tune")
    with pytest.raises(ConfigError):
        trust.check_sweep_folder(sweep_dir, experiment)
    said = []
    assert trust.check_sweep_folder(sweep_dir, experiment, trust_state=True, say=said.append)  # to be marked
    assert len(said) == 1 and said[0].startswith("--trust-sweep-state: trusting the Tune state in")
    trust.mark_owner(sweep_dir)
    assert not trust.check_sweep_folder(sweep_dir, experiment, say=said.append)  # marked: resumes as it is
    assert len(said) == 1 and ran(witnesses) == []  # the check reads no Tune file


def test_a_new_sweep_needs_no_marker_and_gets_one(tmp_path):
    sweep_dir = tmp_path / "runs" / "new"
    (sweep_dir / "ray" / "tune").mkdir(parents=True)  # an empty experiment folder is no state
    assert trust.check_sweep_folder(sweep_dir, str(sweep_dir / "ray" / "tune"))
    assert not (sweep_dir / trust.MARKER).exists()  # the check writes nothing: run_sweep marks after its checks
    trust.mark_owner(sweep_dir)
    assert trust.why_not_owned(sweep_dir) is None
    other = tmp_path / "runs" / "other"
    trust.mark_owner(other)
    marker = json.loads((other / trust.MARKER).read_text())
    assert set(marker) == {"nonce", "hmac_sha256"} and marker != json.loads((sweep_dir / trust.MARKER).read_text())


def test_tune_state_on_a_uri_is_checked_against_the_local_marker(tmp_path):
    store = tmp_path / "store"
    experiment = (store / "sweep" / "tune").as_uri()
    sweep_dir = tmp_path / "runs" / "sweep"
    assert not trust.holds_tune_state(experiment) and trust.check_sweep_folder(sweep_dir, experiment)
    trust.mark_owner(sweep_dir)  # the marker is local; Tune's state is at the URI
    (store / "sweep" / "tune").mkdir(parents=True)
    (store / "sweep" / "tune" / "tuner.pkl").write_bytes(b"state")
    assert trust.holds_tune_state(experiment) and not trust.check_sweep_folder(sweep_dir, experiment)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(tmp_path))}/runs/elsewhere: .*\({re.escape(experiment)}\)"
                       r".*no owner marker"):
        trust.check_sweep_folder(tmp_path / "runs" / "elsewhere", experiment)


def test_the_key_is_made_once_private_and_found_where_documented(tmp_path, monkeypatch, own_key):
    key = trust.user_key()
    assert len(key) == 32 and trust.user_key() == key
    assert stat.S_IMODE(own_key.stat().st_mode) == 0o600
    assert [path.name for path in own_key.parent.iterdir()] == ["mine"]  # no temporary file left
    monkeypatch.delenv(trust.KEY_ENV)
    assert trust.key_path() == tmp_path / "home" / ".config" / "tcam-ray" / "key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert trust.key_path() == tmp_path / "home" / ".config" / "tcam-ray" / "key"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert trust.key_path() == tmp_path / "xdg" / "tcam-ray" / "key"
    monkeypatch.setenv(trust.KEY_ENV, str(own_key))
    own_key.write_text("not hex")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(own_key))}: not a tcam-ray key"):
        trust.user_key()


def test_the_cli_passes_trust_sweep_state_only_when_asked(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tcam_ray.cli.app import app

    asked = []

    def fake_run_sweep(sweep, say, trust_sweep_state):
        asked.append(trust_sweep_state)
        raise SystemExit(0)

    monkeypatch.setattr("tcam_ray.tune.tuner.run_sweep", fake_run_sweep)  # the verb imports it when it runs
    sweep_file = str(sweep_files(tmp_path))
    CliRunner().invoke(app, ["tune", "--config", sweep_file])
    CliRunner().invoke(app, ["tune", "--config", sweep_file, "--trust-sweep-state"])
    assert asked == [False, True]
    help_text = " ".join(re.sub("[│╭╮╰╯─]", " ", CliRunner().invoke(app, ["tune", "--help"]).output).split())
    assert "--trust-sweep-state" in help_text and "Only for a sweep you started yourself" in help_text
    assert "never use this for a sweep folder you received" in help_text
