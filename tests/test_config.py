from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml

from tcam_ray.config import Config, ConfigError, config_from_dict, load, resolve_paths, to_dict
from tcam_ray.config.loader import packaged_configs, packaged_configs_dir, read_config_file
from tcam_ray.runs import create_run_dir
from tcam_ray.train.checkpoints import checkpoint_config

from .conftest import REPO, YTOV1_METADATA


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("tune-")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Training configs; the sweep files (tune-*.yaml) are loaded by tests/test_tune.py."""
    cfg = load(path)
    assert isinstance(cfg, Config)


def test_defaults_without_a_file():
    cfg = load()
    assert cfg.synth.classes == 4 and cfg.dataset.metadata is None


def test_unknown_key_in_file_names_key_file_and_closest(tmp_path):
    path = write(tmp_path / "c.yaml", {"dataset": {"rot": "x"}})
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert "'dataset.rot'" in message and str(path) in message and "did you mean 'dataset.root'?" in message


def test_unknown_section_suggests_section(tmp_path):
    path = write(tmp_path / "c.yaml", {"synt": {"classes": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'synt'.*did you mean 'synth'"):
        load(path)


def test_unknown_key_far_from_everything_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"valid keys here: .*classes.*videos"):
        load(overrides=["synth.zzzzzzz=1"])


def test_unknown_override_key_names_the_override():
    with pytest.raises(ConfigError, match=r"'synth.clases' \(in --set synth.clases=3\); did you mean 'synth.classes'"):
        load(overrides=["synth.clases=3"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("synth.classes=abc", r"'synth.classes': expected int, got 'abc'"),
        ("synth.classes=2.5", r"'synth.classes': expected int, got 2.5"),
        ("synth.classes=true", r"'synth.classes': expected int, got True"),
        ("synth.aspect=wide", r"'synth.aspect': expected float"),
        ("dataset.probe_frames=al", r"'dataset.probe_frames': 'al' is not one of 'all', 'first'; did you mean 'all'"),
        ("synth.classes=40", r"'synth.classes': must be between 1 and 12, got 40"),
        ("synth.classes.x=1", r"'synth.classes' has no sub-keys"),
    ],
)
def test_wrong_values_are_rejected_with_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load(overrides=[override])


def test_wrong_type_in_file(tmp_path):
    path = write(tmp_path / "c.yaml", {"synth": {"size": [96, 128]}})
    with pytest.raises(ConfigError, match=r"'synth.size' \(in .*c.yaml, or --set\): expected int, got \[96, 128\]"):
        load(path)


def test_a_section_given_a_scalar_is_rejected(tmp_path):
    path = write(tmp_path / "c.yaml", {"dataset": "somewhere"})
    with pytest.raises(ConfigError, match=r"'dataset' \(in .*c.yaml.*\): expected DatasetConfig, got 'somewhere'"):
        load(path)


def test_override_values_are_typed_like_yaml():
    cfg = load(overrides=["synth.aspect=1e0", "dataset.name=123", "dataset.metadata=null", "synth.size=64"])
    assert cfg.synth.aspect == 1.0 and cfg.dataset.name == "123" and cfg.dataset.metadata is None
    assert cfg.synth.size == 64


def test_malformed_override():
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load(overrides=["synth.size"])


def test_base_include_merges_and_the_file_wins(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", {"synth": {"classes": 2, "size": 64}, "dataset": {"name": "from-base"}})
    child = write(tmp_path / "sub" / "child.yaml", {"base": "../base.yaml", "synth": {"size": 80}})
    cfg = load(child)
    assert (cfg.synth.classes, cfg.synth.size, cfg.dataset.name) == (2, 80, "from-base")


def test_overrides_win_over_file_and_base(tmp_path):
    write(tmp_path / "base.yaml", {"synth": {"classes": 2}})
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "synth": {"classes": 3}})
    assert load(child, ["synth.classes=5"]).synth.classes == 5


def test_bases_chain_and_nearer_files_win(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "top").mkdir()
    write(tmp_path / "recipes" / "root.yaml",
          {"synth": {"classes": 2, "size": 64, "seed": 1}, "dataset": {"name": "from-root"}})
    write(tmp_path / "recipes" / "middle.yaml", {"base": "root.yaml", "synth": {"size": 80}})
    top = write(tmp_path / "top" / "top.yaml", {"base": "../recipes/middle.yaml", "synth": {"seed": 7}})
    cfg = load(top)
    assert (cfg.synth.classes, cfg.synth.size, cfg.synth.seed, cfg.dataset.name) == (2, 80, 7, "from-root")
    data, sources = read_config_file(top)
    recipes = (tmp_path / "recipes").resolve()
    assert sources == [top, recipes / "middle.yaml", recipes / "root.yaml"]
    assert "base" not in data


def test_middle_file_overrides_its_base_and_the_top_file_wins_over_both(tmp_path):
    write(tmp_path / "a.yaml", {"synth": {"classes": 2, "size": 64}})
    write(tmp_path / "b.yaml", {"base": "a.yaml", "synth": {"classes": 3, "size": 72}})
    child = write(tmp_path / "c.yaml", {"base": "b.yaml", "synth": {"size": 96}})
    cfg = load(child)
    assert (cfg.synth.classes, cfg.synth.size) == (3, 96)


def test_a_base_cycle_names_the_files_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, {"base": "b.yaml"})
    write(b, {"base": "a.yaml"})
    with pytest.raises(ConfigError) as err:
        load(a)
    assert str(err.value) == f"config base cycle: {a.resolve()} -> {b.resolve()} -> {a.resolve()}"
    # a cycle further down the chain names only its own files
    top = write(tmp_path / "top.yaml", {"base": "b.yaml"})
    with pytest.raises(ConfigError) as err:
        load(top)
    assert str(err.value) == f"config base cycle: {b.resolve()} -> {a.resolve()} -> {b.resolve()}"
    selfish = write(tmp_path / "self.yaml", {"base": "./self.yaml"})
    with pytest.raises(ConfigError, match=r"config base cycle: .*self.yaml -> .*self.yaml$"):
        load(selfish)


def test_a_missing_base_deep_in_the_chain_names_the_file(tmp_path):
    write(tmp_path / "b.yaml", {"base": "nowhere.yaml"})
    child = write(tmp_path / "c.yaml", {"base": "b.yaml"})
    with pytest.raises(ConfigError, match=r"config file not found: .*nowhere.yaml"):
        load(child)
    write(tmp_path / "b.yaml", {"base": "broken.yaml"})
    write(tmp_path / "broken.yaml", "synth: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load(child)
    write(tmp_path / "b.yaml", {"base": ["x.yaml"]})
    with pytest.raises(ConfigError, match=r"b.yaml: 'base' must be one file name"):
        load(child)


def test_several_bases_are_refused(tmp_path):
    child = write(tmp_path / "c.yaml", {"base": ["a.yaml", "b.yaml"]})
    with pytest.raises(ConfigError, match=r"'base' must be one file name"):
        load(child)


def test_missing_base_and_bad_yaml_name_the_file(tmp_path):
    child = write(tmp_path / "c.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(ConfigError, match=r"config file not found: .*nowhere.yaml"):
        load(child)
    broken = write(tmp_path / "broken.yaml", "synth: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load(broken)


def test_nesterov_needs_momentum():
    assert load(overrides=["train.nesterov=true"]).train.nesterov
    with pytest.raises(ConfigError, match=r"config key 'train.nesterov': Nesterov momentum needs train.momentum > 0"):
        load(overrides=["train.nesterov=true", "train.momentum=0"])


def test_a_retired_key_in_a_user_file_says_it_was_removed_and_why(tmp_path):
    path = write(tmp_path / "c.yaml", {"eval": {"box_mode": "largest"}})
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"config key 'eval.box_mode' (in {path}) was removed: ")
    assert "largest contour for CorLoc" in message and "all contours for MaxBoxAccV2" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"'eval.box_mode' \(in --set eval.box_mode=all\) was removed: "):
        load(overrides=["eval.box_mode=all"])


def test_a_retired_key_in_a_base_file_is_an_error_too(tmp_path):
    write(tmp_path / "base.yaml", {"eval": {"box_mode": "all", "thresholds": 10}})
    child = write(tmp_path / "c.yaml", {"base": "base.yaml"})
    with pytest.raises(ConfigError, match=r"'eval.box_mode' \(in .*c.yaml or its base .*base.yaml\) was removed"):
        load(child)


def test_a_checkpoint_config_with_a_retired_key_loads(tmp_path):
    """Checkpoints written before eval.box_mode was removed carry it in their config.yaml."""
    cfg = load(overrides=["synth.classes=3", "eval.thresholds=10"])
    saved = to_dict(cfg)
    saved["eval"]["box_mode"] = "largest"
    folder = tmp_path / "epoch-0001"
    folder.mkdir()
    write(folder / "config.yaml", saved)
    assert checkpoint_config(folder) == cfg
    write(folder / "config.yaml", {"eval": {"box_mode": "largest"}})
    assert checkpoint_config(folder) == load()


def test_a_checkpoint_config_with_an_unknown_key_is_still_an_error(tmp_path):
    write(tmp_path / "config.yaml", {"eval": {"box_mode": "largest", "box_mod": "all"}})
    with pytest.raises(ConfigError, match=r"config.yaml: unknown config key 'eval.box_mod'"):
        checkpoint_config(tmp_path)


def test_ray_worker_dicts_still_refuse_retired_keys():
    plain = to_dict(load())
    plain["eval"]["box_mode"] = "largest"
    with pytest.raises(ConfigError, match=r"unknown config key 'eval.box_mode'"):
        config_from_dict(plain)


def test_plain_dict_round_trip_for_ray_workers():
    cfg = load(overrides=["synth.classes=7", "dataset.root=/data/x"])
    plain = to_dict(cfg)
    assert json.loads(json.dumps(plain)) == plain  # only plain types inside
    assert config_from_dict(pickle.loads(pickle.dumps(plain))) == cfg


def test_tune_style_overlay_on_the_plain_dict_is_validated():
    plain = to_dict(load())
    plain["synth"]["clases"] = 3
    with pytest.raises(ConfigError, match="did you mean 'synth.classes'"):
        config_from_dict(plain)


def test_resolve_paths_makes_local_paths_absolute(tmp_path):
    cfg = resolve_paths(load(overrides=["dataset.root=data/x", "run.root=out"]), cwd=tmp_path)
    assert cfg.dataset.root == str(tmp_path / "data" / "x")
    assert cfg.dataset.metadata == str(tmp_path / "data" / "x" / "metadata")
    assert cfg.run.root == str(tmp_path / "out")
    stores = resolve_paths(load(overrides=["tcam.cams=runs/c.parquet", "model.weights=w.pth"]), cwd=tmp_path)
    assert stores.tcam.cams == str(tmp_path / "runs" / "c.parquet") and stores.model.weights == str(tmp_path / "w.pth")


def test_packaged_metadata_resolves_and_unknown_names_list_what_ships(tmp_path):
    cfg = resolve_paths(load(REPO / "configs" / "ytov1.yaml"), cwd=tmp_path)
    assert Path(cfg.dataset.metadata) == YTOV1_METADATA
    with pytest.raises(ConfigError, match=r"no packaged metadata 'ytov9'; shipped: YouTube-Objects-v1.0"):
        resolve_paths(load(overrides=["dataset.metadata=package:ytov9"]), cwd=tmp_path)


def test_run_folder_holds_the_resolved_config(tmp_path):
    cfg = resolve_paths(load(overrides=["run.name=r1", "synth.classes=6"]), cwd=tmp_path)
    run_dir = create_run_dir(cfg, "index")
    assert run_dir == tmp_path / "runs" / "r1"
    written = load(run_dir / "config.yaml")
    assert written == cfg


def test_cli_reports_config_errors_without_a_traceback(cli, tmp_path):
    result = cli("config", "--set", "synth.clases=3", cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean 'synth.classes'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_config_prints_the_resolved_yaml(cli, tmp_path):
    base = write(tmp_path / "base.yaml", {"synth": {"classes": 2}})
    child = write(tmp_path / "child.yaml", {"base": base.name, "synth": {"size": 64}})
    result = cli("config", "--config", str(child), "--set", "synth.seed=9", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["synth"]["classes"] == 2 and shown["synth"]["size"] == 64 and shown["synth"]["seed"] == 9
    assert shown["dataset"]["root"] == str(tmp_path / "data" / "synthetic")


# --------------------------------------------------------------------------- packaged configs by name


def test_a_packaged_config_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert to_dict(load("ytov1-cam")) == to_dict(load(REPO / "configs" / "ytov1-cam.yaml"))
    _, sources = read_config_file("ytov1-cam")
    assert [path.name for path in sources] == ["ytov1-cam.yaml", "ytov1.yaml"]  # its base from the package too
    assert {path.parent for path in sources} == {packaged_configs_dir()}


def test_a_users_file_may_name_a_packaged_base(tmp_path):
    mine = write(tmp_path / "mine.yaml", {"base": "ytov1-cam", "train": {"lr": 0.5}})
    cfg, recipe = load(mine), load("ytov1-cam")
    assert cfg.train.lr == 0.5 and cfg.train.lr != recipe.train.lr
    assert cfg.dataset.name == recipe.dataset.name and cfg.model == recipe.model


def test_a_file_of_that_name_wins_and_a_folder_of_that_name_is_passed_over(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "demo", {"dataset": {"name": "my-own-demo"}})
    (tmp_path / "bench").mkdir()  # e.g. an output folder
    assert load("demo").dataset.name == "my-own-demo"
    assert to_dict(load("bench")) == to_dict(load(REPO / "configs" / "bench.yaml"))


def test_an_unknown_name_is_one_line_listing_the_packaged_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load("ytov1-cma")
    message = str(err.value)
    assert "\n" not in message and "'ytov1-cma'" in message
    assert all(name in message for name in packaged_configs())
    mine = write(tmp_path / "mine.yaml", {"base": "ytov1-cma"})
    with pytest.raises(ConfigError, match=r"mine.yaml: 'base: ytov1-cma': no config file or packaged config named"):
        load(mine)


def test_a_packaged_name_given_as_a_missing_file_says_how_to_name_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config file not found: ytov1-cam.yaml \(the packaged config of that "
                                          r"name is --config ytov1-cam"):
        load("ytov1-cam.yaml")


def test_cli_config_list_and_config_by_name(cli, tmp_path):
    listed = cli("config", "--list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(packaged_configs())
    ytov1_cam = next(line for line in lines if line.startswith("ytov1-cam "))
    assert "Stage 1 on YouTube-Objects v1.0" in ytov1_cam
    shown = cli("config", "--config", "ytov1-cam", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["dataset"]["name"] == load("ytov1-cam").dataset.name
    unknown = cli("config", "--config", "ytov1-cma", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("error: no config file or packaged config named 'ytov1-cma'")
    assert len(unknown.stderr.strip().splitlines()) == 1
