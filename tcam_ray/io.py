"""Small file helpers shared by every layer."""
from __future__ import annotations

import os
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
