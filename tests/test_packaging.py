"""What a `pip install .` (not editable) ships, and how the library behaves inside a user's own process.

The build test runs setuptools' build_py, the step that lays out a wheel's Python files and package
data, into a scratch folder: it compiles nothing (the CRF op is built by build_ext, not run here).
"""
from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

from tcam_ray import viz
from tcam_ray.config import Config, load
from tcam_ray.config.loader import packaged_configs
from tcam_ray.tune.results import TrialRow, plot_curves
from tcam_ray.tune.sweep import load_sweep

from .conftest import REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def repo_files(folder: str, pattern: str) -> set[str]:
    return {path.name for path in (REPO / folder).glob(pattern)}


@pytest.fixture(scope="module")
def built_lib(tmp_path_factory) -> Path:
    """The package as a wheel would hold it: setup.py's build_py output (no compiling)."""
    scratch = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(scratch),
                    "build_py", "--build-lib", str(scratch / "lib")], cwd=REPO, check=True, capture_output=True)
    return scratch / "lib"


def test_the_built_package_holds_every_config_cli_module_and_split_file(built_lib):
    package = built_lib / "tcam_ray"
    assert {p.name for p in (package / "configs").glob("*.yaml")} == repo_files("configs", "*.yaml")
    assert {p.name for p in (package / "cli").glob("*.py")} == repo_files("cli", "*.py")
    metadata = REPO / "tcam_ray" / "data" / "metadata"
    shipped = {p.relative_to(metadata) for p in metadata.rglob("*") if p.is_file()}
    assert {p.relative_to(package / "data" / "metadata") for p in (package / "data" / "metadata").rglob("*")
            if p.is_file()} == shipped
    assert not (built_lib / "cli").exists(), "the Typer app installs as tcam_ray.cli, not a top-level `cli`"


def test_the_repository_configs_folder_is_the_packaged_one():
    """configs/NAME.yaml (README, Makefile, clusters) and `--config NAME` read the same files."""
    packaged = Path(str(importlib.resources.files("tcam_ray") / "configs"))
    assert (REPO / "configs").resolve() == packaged.resolve()


@pytest.mark.parametrize("name", sorted(packaged_configs()))
def test_every_packaged_config_loads_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a user's folder, not the repository
    if name.startswith("tune-"):
        sweep = load_sweep(name)
        assert sweep.training_config_path().parent == packaged_configs()[name].parent
    else:
        assert isinstance(load(name), Config)


def test_plots_leave_the_users_matplotlib_backend_and_figures_alone(tmp_path):
    """A notebook has its own backend and open figures: plotting curves must switch neither."""
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # a non-Agg backend, as a notebook's inline one
    try:
        users_figure = plt.figure()
        records = [{"split": split, "epoch": epoch, "loss": 1.0 / epoch, "top1": 50.0 + epoch, "corloc": 40.0}
                   for split in ("train", "val") for epoch in (1, 2)]
        sweep = load_sweep("tune-synthetic")
        row = TrialRow("t_00000", "STOPPED", 2, 41.0, 2, {"train.lr": 0.05}, tmp_path, [(1, 40.0), (2, 41.0)], {})
        plots = [viz.plot_training_curves(records, tmp_path / "curves.png"),
                 viz.plot_threshold_curve([0.1, 0.5, 0.9], [30.0, 45.0, 20.0], tmp_path / "threshold.png"),
                 plot_curves([row], sweep, tmp_path / "sweep.png")]
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [users_figure.number]
    finally:
        plt.close("all")
        matplotlib.use(previous)
    for plot in plots:
        assert plot.read_bytes().startswith(PNG_SIGNATURE)
