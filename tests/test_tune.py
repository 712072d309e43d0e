"""`tcam-ray tune`: sweep files, the search space, resources, results, and a real ASHA sweep on tiny
data that stops the trial that cannot learn and resumes after a crashed trial (Tuner.restore)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tcam_ray.config import ConfigError, ScaleConfig, SynthConfig, load, to_dict
from tcam_ray.data.synthetic import generate
from tcam_ray.tune import results
from tcam_ray.tune.resources import TrialResources, max_concurrent_trials, trials_that_fit
from tcam_ray.tune.search_space import param_space, sampled_values
from tcam_ray.tune.sweep import load_sweep
from tcam_ray.tune.tuner import prepare_sweep_folder

from .conftest import REPO

TINY = SynthConfig(classes=2, videos=2, val_videos=1, test_videos=1, shots=2, frames=8, size=48, eval_stride=2)
TINY_TRAINING = {
    "input": {"crop_size": 32, "resize_size": 40, "batch_size": 4, "decode_batch_size": 16},
    "train": {"keep_last": 1},
    "scale": {"num_workers": 1, "cpus_per_worker": 0.5},
    "eval": {"thresholds": 20},
}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sweep_files(folder: Path, space: dict | None = None, training: dict | None = None, **settings) -> Path:
    """A training config and a sweep file over it in `folder`; returns the sweep file."""
    write_yaml(folder / "train.yaml", training or TINY_TRAINING)
    sweep = {"config": "train.yaml", "stage": "cam", "space": space or {"train.lr": {"grid": [0.01, 0.1]}}, **settings}
    return write_yaml(folder / "sweep.yaml", sweep)


# --------------------------------------------------------------------------- sweep files


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("tune-*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_files_load(path):
    sweep = load_sweep(path)
    assert sweep.metric == "val_corloc" and sweep.mode == "max"
    assert sweep.base.train.epochs == sweep.max_t  # max_t is the trials' training length
    assert sweep.dimensions


def test_ytov1_sweep_searches_the_tcam_knobs_the_issue_names():
    keys = {dim.key for dim in load_sweep(REPO / "configs" / "tune-ytov1-tcam.yaml").dimensions}
    assert {"tcam.crf_weight", "tcam.n", "tcam.max_p", "tcam.min_p", "tcam.elb_init_t", "tcam.elb_mulcoef",
            "train.lr"} <= keys


def test_defaults_of_a_minimal_sweep_file(tmp_path):
    sweep = load_sweep(sweep_files(tmp_path))
    settings = sweep.settings
    assert (settings.metric, settings.mode, settings.num_samples, settings.max_concurrent_trials) == (
        "val_corloc", "max", 1, None)
    assert (settings.asha.max_t, settings.asha.grace_period, settings.asha.reduction_factor) == (10, 1, 2.0)
    assert sweep.base.scale.cpus_per_worker == 0.5  # the training config's own settings are kept


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"grid": [0.1]}}, r"unknown config key 'train.lrr' .*sweep.yaml.*did you mean 'train.lr'"),
    ({"tcam.nn": {"choice": [1]}}, r"did you mean 'tcam.n'"),
    ({"train.lr": {"logunifrom": [0.1, 1]}}, r"space.train.lr.*unknown distribution 'logunifrom'; did you mean 'loguniform'"),
    ({"tcam.n": {"uniform": [0, 3]}}, r"space.tcam.n.*uniform draws floats but tcam.n takes int; use choice or grid"),
    ({"train.lr": {"loguniform": [0.0, 1]}}, r"loguniform needs low > 0"),
    ({"train.lr": {"uniform": [0.5, 0.1]}}, r"low 0.5 must be below high 0.1"),
    ({"train.lr": {"choice": [0.1, -1]}}, r"space.train.lr.*value -1.0 is refused .*train.lr.*must be positive"),
    ({"tcam.max_p": {"uniform": [0.5, 1.5]}}, r"value 1.5 is refused .*fractions in \(0, 1\]"),
    ({"tcam.direction": {"grid": ["before", "bothh"]}}, r"'bothh' is not one of .*did you mean 'both'"),
    ({"input.batch_size": {"choice": [16, 8.5]}}, r"input.batch_size.*expected int, got 8.5"),
    ({"train.epochs": {"choice": [3]}}, r"train.epochs cannot be searched \(asha.max_t sets it\)"),
    ({"scale.num_workers": {"choice": [1, 2]}}, r"scale.num_workers cannot be searched"),
    ({"train.lr": [0.1, 0.2]}, r"give one distribution"),
])
def test_bad_search_spaces_name_the_key(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(sweep_files(tmp_path, space))


def test_unknown_sweep_key_and_unreported_metric(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'num_sample' .*did you mean 'num_samples'"):
        load_sweep(sweep_files(tmp_path, num_sample=3))
    with pytest.raises(ConfigError, match=r"unknown config key 'asha.max_epochs' .*valid keys|did you mean"):
        load_sweep(sweep_files(tmp_path, asha={"max_epochs": 3}))
    with pytest.raises(ConfigError, match=r"'val_corlc' is not reported by the trials; did you mean 'val_corloc'"):
        load_sweep(sweep_files(tmp_path, metric="val_corlc"))
    with pytest.raises(ConfigError, match=r"asha.grace_period.*between 1 and asha.max_t \(3\)"):
        load_sweep(sweep_files(tmp_path, asha={"max_t": 3, "grace_period": 4}))


def test_training_length_is_asha_max_t_not_a_set_override(tmp_path):
    path = sweep_files(tmp_path, asha={"max_t": 4})
    assert load_sweep(path).base.train.epochs == 4
    with pytest.raises(ConfigError, match=r"--set train.epochs=9: .*change asha.max_t"):
        load_sweep(path, ["train.epochs=9"])


def test_param_space_overlays_the_nested_config_key_by_key(tmp_path):
    from ray import tune

    sweep = load_sweep(sweep_files(tmp_path, {"train.lr": {"loguniform": [1e-3, 1e-1]},
                                              "tcam.direction": {"grid": ["before", "both"]}}))
    space = param_space(sweep.base, sweep.dimensions)
    assert isinstance(space["train"]["lr"], tune.search.sample.Float)
    assert space["tcam"]["direction"] == {"grid_search": ["before", "both"]}
    assert space["input"] == to_dict(sweep.base)["input"]  # everything else is the plain config
    sampled = {**to_dict(sweep.base), "train": {**to_dict(sweep.base)["train"], "lr": 0.02}}
    assert sampled_values(sampled, sweep.dimensions) == {"train.lr": 0.02, "tcam.direction": "before"}


def test_a_sweep_folder_resumes_only_the_sweep_it_holds(tmp_path):
    sweep = load_sweep(sweep_files(tmp_path))
    prepare_sweep_folder(sweep, tmp_path / "s")
    prepare_sweep_folder(sweep, tmp_path / "s")  # the same sweep: fine
    other = load_sweep(sweep_files(tmp_path, {"train.lr": {"grid": [0.01, 0.2]}}))
    with pytest.raises(ConfigError, match=r"holds a sweep started with space.train.lr.grid=\[0.01, 0.1\] .*not \[0.01, 0.2\].*choose another run.name"):
        prepare_sweep_folder(other, tmp_path / "s")
    changed = load_sweep(sweep_files(tmp_path), ["train.momentum=0.5"])
    with pytest.raises(ConfigError, match=r"train.momentum=0.9 .*not 0.5"):
        prepare_sweep_folder(changed, tmp_path / "s")


# --------------------------------------------------------------------------- storage


def test_ray_storage_may_be_a_uri_but_run_folders_are_folders(tmp_path):
    from tcam_ray.config import resolve_paths
    from tcam_ray.runs import ray_storage_path

    cfg = resolve_paths(load(overrides=["run.storage=s3://bucket/tcam-ray"]), cwd=tmp_path)
    assert cfg.run.storage == "s3://bucket/tcam-ray"  # passed to Ray as it is
    assert ray_storage_path(cfg.run, tmp_path / "runs" / "sweep") == "s3://bucket/tcam-ray/sweep"
    local = resolve_paths(load(overrides=["run.storage=store"]), cwd=tmp_path)
    assert ray_storage_path(local.run, tmp_path / "sweep") == str(tmp_path / "store" / "sweep")
    default = resolve_paths(load(), cwd=tmp_path)
    assert ray_storage_path(default.run, tmp_path / "sweep") == str(tmp_path / "sweep" / "ray")
    with pytest.raises(ConfigError, match=r"'run.root': 'gs://bucket/runs' is a URI.*put the URI in run.storage"):
        resolve_paths(load(overrides=["run.root=gs://bucket/runs"]))


# --------------------------------------------------------------------------- command line


def test_verbs_that_run_on_ray_take_an_address():
    from typer.testing import CliRunner

    from tcam_ray.cli.app import app

    for verb in ("tune", "train", "cams", "demo"):
        result = CliRunner().invoke(app, [verb, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert all(option in result.output for option in ("--address", "--config", "--set")), verb


def test_tune_cli_passes_its_options_to_the_sweep(tmp_path):
    """--set reaches the training config and --num-samples the sweep, before anything runs: a bad
    key is the loader's error (the entry point prints it without a traceback)."""
    from typer.testing import CliRunner

    from tcam_ray.cli.app import app

    sweep = str(sweep_files(tmp_path))
    result = CliRunner().invoke(app, ["tune", "--config", sweep, "--set", "train.momentumm=0.5"])
    assert isinstance(result.exception, ConfigError) and "did you mean 'train.momentum'" in str(result.exception)
    result = CliRunner().invoke(app, ["tune", "--config", sweep, "--num-samples", "0"])
    assert isinstance(result.exception, ConfigError) and "num_samples" in str(result.exception)


# --------------------------------------------------------------------------- resources


def test_trials_that_fit_keep_a_cpu_for_decoding():
    half = TrialResources.of(ScaleConfig(num_workers=1, cpus_per_worker=0.5))
    assert half.cpus == pytest.approx(0.6)
    assert trials_that_fit(half, {"CPU": 2.0}) == 1  # 2 trials would leave 0.8 CPU: decode tasks starve
    assert trials_that_fit(TrialResources.of(ScaleConfig(num_workers=1, cpus_per_worker=0.4)), {"CPU": 2.0}) == 2
    gpu = TrialResources.of(ScaleConfig(num_workers=2, cpus_per_worker=4, use_gpu=True))
    assert trials_that_fit(gpu, {"CPU": 64.0, "GPU": 8.0}) == 4  # GPUs bound it
    assert max_concurrent_trials(gpu, {"CPU": 8.0}, requested=6) == 6  # autoscaling: the sweep says
    with pytest.raises(ValueError, match=r"one trial needs 8.1 CPU \+ 2 GPU plus 1 CPU .*has 8 CPU, 0 GPU.*max_concurrent"):
        max_concurrent_trials(gpu, {"CPU": 8.0}, requested=None)
    with pytest.raises(ValueError, match=r"scale.num_workers=0 .*set scale.num_workers to 1 or more"):
        TrialResources.of(ScaleConfig(num_workers=0))


# --------------------------------------------------------------------------- results


def fake_trial(run_root: Path, trial_id: str, status: str, lr: float, corlocs: list[float], base: dict):
    """A finished Tune trial as ExperimentAnalysis gives it, with its run folder's metrics.jsonl."""
    run_dir = run_root / "trials" / trial_id
    run_dir.mkdir(parents=True)
    lines = []
    for epoch, corloc in enumerate(corlocs, 1):
        lines += [{"epoch": epoch, "split": "train", "loss": 1.0}, {"epoch": epoch, "split": "val", "corloc": corloc}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = {**base, "train": {**base["train"], "lr": lr}}
    return SimpleNamespace(trial_id=trial_id, status=status, config=config, last_result={"epoch": len(corlocs)})


def test_results_table_csv_best_yaml_and_plot(tmp_path):
    sweep = load_sweep(sweep_files(tmp_path, asha={"max_t": 3}))
    base = to_dict(sweep.base)
    trials = [fake_trial(tmp_path, "t_00000", "TERMINATED", 0.01, [10.0, 30.0, 20.0], base),
              fake_trial(tmp_path, "t_00001", "TERMINATED", 0.1, [5.0], base),
              fake_trial(tmp_path, "t_00002", "ERROR", 0.05, [40.0, 0.0], base)]
    analysis = SimpleNamespace(trials=trials, trial_dataframes={})
    rows = results.collect_rows(analysis, sweep, tmp_path)
    assert [(r.trial_id, r.status, r.epochs, r.best, r.best_epoch) for r in rows] == [
        ("t_00002", "error", 2, 40.0, 1), ("t_00000", "done", 3, 30.0, 2), ("t_00001", "stopped early", 1, 5.0, 1)]
    table = results.format_table(rows, sweep)
    assert table.splitlines()[0].split() == ["trial", "train.lr", "best", "val_corloc", "at", "epoch", "epochs", "status"]
    with results.write_csv(rows, sweep, tmp_path / "results.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert [(r["trial_id"], r["train.lr"], r["status"], r["epochs"]) for r in written] == [
        ("t_00002", "0.05", "error", "2"), ("t_00000", "0.01", "done", "3"), ("t_00001", "0.1", "stopped early", "1")]
    best_yaml = results.write_best_yaml(rows[0], sweep, tmp_path / "best.yaml")
    best = load(best_yaml)  # ready to run: a valid training config
    assert best.train.lr == 0.05 and best.train.epochs == 3 and best.run.name is None
    assert "t_00002" in best_yaml.read_text().splitlines()[0]
    assert results.plot_curves(rows, sweep, tmp_path / "curve.png").stat().st_size > 5000


# --------------------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune-data") / "data"
    generate(TINY, root)
    return root


@pytest.mark.slow
def test_asha_stops_the_trial_that_cannot_learn_and_an_interrupted_sweep_resumes(cli, tiny_dataset, tmp_path):
    """Two trials, one at a time so that the outcome does not depend on arrival order: lr 0.01
    first, which reports epochs 1 and 2 and then crashes (train.fail_at_epoch=3, no retries);
    then lr 1000, whose loss explodes: ASHA (grace 1, factor 2) stops it at its first rung,
    before max_t. Running the same command again restores the Tune experiment (the first run marked
    the sweep folder as this user's) and the crashed trial goes on from its epoch-2 checkpoint to
    max_t. Ray's storage is a URI (file://): the marker stays in the local sweep folder."""
    store = (tmp_path / "store").as_uri()
    training = {**TINY_TRAINING, "dataset": {"root": str(tiny_dataset)},
                "train": {"keep_last": 1, "fail_at_epoch": 3}, "scale": {**TINY_TRAINING["scale"], "max_failures": 0},
                "run": {"root": str(tmp_path / "runs"), "name": "sweep", "storage": store}}
    sweep_file = sweep_files(tmp_path, {"train.lr": {"grid": [0.01, 1000.0]}}, training, metric="train_loss",
                             mode="min", asha={"max_t": 3, "grace_period": 1, "reduction_factor": 2},
                             max_concurrent_trials=1)
    sweep_dir = tmp_path / "runs" / "sweep"

    first = cli("tune", "--config", str(sweep_file))
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 trial(s) did not finish" in first.stderr and "run.name=sweep" in first.stderr
    rows = {row["train.lr"]: row for row in csv.DictReader((sweep_dir / "results.csv").open())}
    assert (rows["0.01"]["status"], rows["0.01"]["epochs"]) == ("error", "2")
    assert (rows["1000.0"]["status"], rows["1000.0"]["epochs"]) == ("stopped early", "1")  # before max_t=3
    assert float(rows["1000.0"]["best_train_loss"]) > 100 * float(rows["0.01"]["best_train_loss"])
    marker = sweep_dir / ".tcam-ray-owner.json"  # this user's sweep: the second run may resume it
    mark = marker.read_bytes()
    marker.unlink()  # without it, the same Tune state is refused before Ray starts
    refused = cli("tune", "--config", str(sweep_file))
    assert refused.returncode == 2 and f"{sweep_dir}: not resuming this sweep" in refused.stderr, refused.stderr
    marker.write_bytes(mark)

    second = cli("tune", "--config", str(sweep_file))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming the sweep" in second.stdout
    resumed = {row["train.lr"]: row for row in csv.DictReader((sweep_dir / "results.csv").open())}
    assert {row["trial_id"] for row in resumed.values()} == {row["trial_id"] for row in rows.values()}  # restored
    assert (resumed["0.01"]["status"], resumed["0.01"]["epochs"]) == ("done", "3")
    assert (resumed["1000.0"]["status"], resumed["1000.0"]["epochs"]) == ("stopped early", "1")

    good = Path(resumed["0.01"]["run_dir"])
    records = [json.loads(line) for line in (good / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "train"] == [1, 2, 3]  # epochs 1-2 kept, not redone
    assert (good / ".injected-failure-epoch-3").exists()
    assert (good / "checkpoints" / "best-top1" / "state.pt").exists()  # usable by evaluate / cams
    best = load(sweep_dir / "best.yaml")
    assert best.train.lr == 0.01 and best.train.epochs == 3
    assert (sweep_dir / "train_loss.png").stat().st_size > 5000

    progress = (tmp_path / "store" / "sweep" / "tune" / resumed["0.01"]["trial_id"] / "progress.csv").read_text()
    assert {"epoch", "val_corloc", "train_loss"} <= set(progress.splitlines()[0].split(","))  # what trials report
    assert (tmp_path / "store" / "sweep" / "results.csv").exists()  # results copied to the URI storage
