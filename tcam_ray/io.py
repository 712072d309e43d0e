"""Small file helpers shared by every layer."""
from __future__ import annotations

import os
import pickle
import re
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


class UnreadableFileError(ValueError):
    """A file that is missing a part, empty, truncated, damaged or unsafe to load; the message names it."""


def load_tensors(path: str | Path, map_location="cpu") -> object:
    """A torch.save file's tensors and plain values, read with `weights_only=True`: a file from a stranger that
    carries other Python objects is refused without running them."""
    import torch

    path = Path(path)
    if path.stat().st_size == 0:
        raise UnreadableFileError(f"{path}: empty (0 bytes): cut off while it was written or copied")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:  # bytes the safe unpickler does not read: no torch.save file of tensors
            raise UnreadableFileError(f"{path}: truncated or damaged (not a torch.save file)") from None
        raise UnreadableFileError(
            f"{path}: refused: it holds a Python object ({found.group(1)}) besides tensors and plain values, and "
            "loading that could run code (tcam-ray writes none). Load it only if you trust its source, and save "
            "its tensors again as plain dicts.") from None
    except (RuntimeError, EOFError, OSError) as err:
        reason = str(err).split(". ")[0] or type(err).__name__
        raise UnreadableFileError(f"{path}: truncated or damaged ({reason})") from None
