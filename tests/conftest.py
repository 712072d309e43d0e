from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Keep every Ray connection a test makes on loopback (see README).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parent.parent
YTOV1_METADATA = REPO / "tcam_ray" / "data" / "metadata" / "YouTube-Objects-v1.0"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `tcam-ray` console script as a user would."""
    exe = Path(sys.executable).with_name("tcam-ray")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def cli():
    return run_cli
