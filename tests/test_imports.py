"""What each entry point imports: the CLI's quick verbs load neither torch nor Ray, and the library loads
Ray only in its Ray modules (data.pipeline, video.distributed, the trainer and Tune)."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import tcam_ray

# the module: tcam_ray.ops.build_info as an attribute is the function of the same name
build_info_module = importlib.import_module("tcam_ray.ops.build_info")

HEAVY = ("torch", "torchvision", "ray", "cv2", "matplotlib")

# Runs `tcam-ray ARGS...` in this interpreter, then names the heavy packages it loaded on stderr.
CLI_SCRIPT = f"""
import sys
from tcam_ray.cli.app import main
sys.argv = ["tcam-ray", *sys.argv[1:]]
try:
    main()
finally:
    loaded = sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r}))
    print("loaded:", ",".join(loaded), file=sys.stderr)
"""


def run_verb(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    result = subprocess.run([sys.executable, "-c", CLI_SCRIPT, *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("loaded:"), result.stderr[-2000:]
    return result, set(filter(None, last.removeprefix("loaded:").strip().split(",")))


def cli_commands():
    """(words, click command) of every verb and sub-verb."""
    import typer

    from tcam_ray.cli.app import app

    def walk(command, words):
        yield words, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*words, name])
    return list(walk(typer.main.get_command(app), []))


def test_help_loads_neither_torch_nor_ray():
    result, loaded = run_verb("--help")
    assert result.returncode == 0 and "train" in result.stdout, result.stderr[-2000:]
    assert not loaded, f"tcam-ray --help imported {loaded}"


@pytest.mark.parametrize("args", [["config"], ["synth", "--help"], ["localize", "--help"], ["train", "--help"]])
def test_quick_verbs_load_nothing_heavy(args):
    result, loaded = run_verb(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not loaded, f"tcam-ray {' '.join(args)} imported {loaded}"


def test_doctor_answers_from_the_recorded_build_without_torch(tmp_path):
    """The first doctor loads the op (torch); later ones read its recorded facts, unless a GPU may be visible
    (then torch is needed to name it)."""
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    first, _ = run_verb("doctor", "--json", env=env)
    second, loaded = run_verb("doctor", "--json", env=env)
    assert first.returncode == second.returncode == 0, first.stdout + first.stderr[-2000:]
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert json.loads(second.stdout)["built"] and list(tmp_path.glob("tcam-ray/ops/*.json"))
    assert ("torch" in loaded) == build_info_module.gpu_may_be_visible(), loaded


def test_recorded_build_is_keyed_by_the_extension_file_and_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    extension, torch_version = tmp_path / "_C_ops.so", tmp_path / "version.py"
    extension.write_bytes(b"build 1")
    torch_version.write_text("__version__ = '2.0.0'\n")
    first = build_info_module.build_cache_file(str(extension), torch_version)
    assert first == build_info_module.build_cache_file(str(extension), torch_version)
    torch_version.write_text("__version__ = '2.0.1'\n")
    assert build_info_module.build_cache_file(str(extension), torch_version) != first
    torch_version.write_text("__version__ = '2.0.0'\n")
    os.utime(extension, ns=(0, 0))  # rebuilt: another mtime
    assert build_info_module.build_cache_file(str(extension), torch_version) != first
    assert build_info_module.build_cache_file(None, torch_version) is None


def test_a_damaged_record_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = build_info_module.build_cache_file(build_info_module.extension_file(),
                                               build_info_module._loader.torch_version_file())
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    info = build_info_module.build_info()
    assert info["built"] and not info["stale"], info
    assert json.loads(cache.read_text())["source_hash"] == info["source_hash"]


def test_verb_help_has_no_forced_line_breaks():
    """Typer keeps a docstring's line breaks inside a paragraph, which makes ragged help at any width."""
    broken = []
    for words, command in cli_commands():
        texts = [("help", command.help or "")]
        texts += [(param.name, getattr(param, "help", None) or "") for param in command.params]
        for where, text in texts:
            broken += [(" ".join(words), where) for paragraph in inspect.cleandoc(text).split("\n\n")
                       if "\n" in paragraph.strip()]
    assert not broken, f"help paragraphs with line breaks inside (verb, where): {broken}"


def early_breaks(help_text: str, columns: int) -> list[str]:
    """Lines of the description (above the option boxes) broken although the next word would have fit."""
    description = help_text.split("╭")[0].splitlines()
    return [line.strip() for line, after in zip(description, description[1:])
            if line.strip() and after.strip() and not line.lstrip().startswith("Usage:")
            and len(line.rstrip()) + 1 + len(after.split()[0]) <= columns - 2]


@pytest.mark.parametrize("columns", [80, 160])
def test_every_verb_help_wraps_at_the_terminal_width(columns):
    from typer.testing import CliRunner

    from tcam_ray.cli.app import app

    for words, _ in cli_commands():
        result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": str(columns)}, terminal_width=columns)
        assert result.exit_code == 0, result.output
        assert max(map(len, result.output.splitlines())) > columns * 0.9, "help not rendered at the asked width"
        assert not early_breaks(result.output, columns), (words, early_breaks(result.output, columns))


def library_modules() -> list[str]:
    """The modules that must not import Ray: every module of these packages but their Ray ones."""
    ray_modules = {"tcam_ray.data.pipeline", "tcam_ray.video.distributed"}
    names = ["tcam_ray.train.runner", "tcam_ray.train.evaluate", "tcam_ray.train.checkpoints",
             "tcam_ray.train.metrics_log"]
    for package in ("models", "methods", "ops", "evaluation", "data", "video", "config"):
        folder = Path(tcam_ray.__file__).parent / package
        names.append(f"tcam_ray.{package}")
        names += [f"tcam_ray.{package}.{module.name}" for module in pkgutil.iter_modules([str(folder)])]
    return [name for name in names if name not in ray_modules]


def test_ray_only_at_the_edges():
    modules = library_modules()
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    if any(m == 'ray' or m.startswith('ray.') for m in sys.modules):\n"
        "        sys.exit(f'importing {name} imported ray')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(modules) > 30
