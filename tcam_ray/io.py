"""Small file helpers shared by every layer: atomic writes that fail as one clear error, safe reads of
torch files."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator

from .errors import UnreadableFileError, WriteFailedError

__all__ = ["UnreadableFileError", "WriteFailedError", "atomic_write_text", "file_sha256", "fsync_folder",
           "load_tensors", "save_tensors", "temporary_sibling", "uninterrupted", "writing"]


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def describe_os_error(err: OSError) -> str:
    code = errno.errorcode.get(err.errno, "") if err.errno else ""
    reason = err.strerror or str(err)
    return f"{code}: {reason}" if code else reason


@contextlib.contextmanager
def writing(path: str | Path, *leftovers: Path) -> Iterator[None]:
    """An OSError inside the block (full disk, read-only folder, ...) becomes one WriteFailedError naming
    `path` and the errno, after the `leftovers` (temporary files or folders) are removed."""
    try:
        yield
    except (OSError, WriteFailedError) as err:
        for leftover in leftovers:
            remove_quietly(leftover)
        if isinstance(err, WriteFailedError):  # a write inside the block already named its file
            raise
        raise WriteFailedError(f"{path}: cannot write ({describe_os_error(err)})") from None


def remove_quietly(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> Path:
    """Write via a temporary file and a rename, so readers never see half a file; `durable` also flushes
    it to the disk before the rename (it survives a power cut)."""
    path = Path(path)
    tmp = temporary_sibling(path)
    with writing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then act as they would have: a checkpoint is written
    whole or not at all (torch.save turns an interrupt into a C++ error). Only the main thread handles
    signals; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = {number: signal.signal(number, lambda signum, frame: received.append(signum))
            for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in held.items():
            signal.signal(number, handler)
        if received:
            handler = held[received[0]]
            if callable(handler):
                handler(received[0], None)
            else:
                signal.raise_signal(received[0])


def save_tensors(obj: object, path: Path) -> None:
    """torch.save into a Python file, flushed to the disk: a full disk is then an OSError (torch's own file
    writer says only "basic_ios::clear" or "unexpected pos")."""
    import torch

    with open(path, "wb") as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):  # the write that failed, masked by closing the zip
                raise err.__context__ from None
            raise
        handle.flush()
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Make the renames inside `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_tensors(path: str | Path, map_location="cpu",
                 if_yours: str = "save its tensors again as plain dicts") -> object:
    """A torch.save file's tensors and plain values, read with `weights_only=True`: a file from a stranger that
    carries other Python objects is refused without running them (`if_yours` says what to do with one of the
    user's own)."""
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
            f"loading that could run code (tcam-ray writes none). Only if it is yours: {if_yours}") from None
    except (RuntimeError, EOFError, OSError) as err:
        reason = str(err).split(". ")[0] or type(err).__name__
        raise UnreadableFileError(f"{path}: truncated or damaged ({reason})") from None
