"""The command line as a user meets it: help, verbs, and the installed layout."""
from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

VERBS = ["synth", "index", "train", "cams", "evaluate", "bench", "doctor", "config"]


def test_top_level_help_lists_the_verbs(cli):
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help_with_config_and_set(cli, verb):
    result = cli(verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--set" in result.stdout


def test_unknown_verb_is_an_error(cli):
    result = cli("trian")
    assert result.returncode != 0 and "No such command" in result.stderr


def test_cli_is_installed_inside_the_package_not_as_top_level_cli(tmp_path):
    """`cli/` in the repository is `tcam_ray.cli` once installed; nothing named `cli` is importable."""
    code = "import importlib.util as u, tcam_ray.cli.app as a; print(a.__file__); print(u.find_spec('cli'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    app_file, cli_spec = result.stdout.split()
    assert app_file == str(REPO / "cli" / "app.py")
    assert cli_spec == "None"
