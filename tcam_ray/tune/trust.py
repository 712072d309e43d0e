"""Which sweeps tcam-ray resumes: only those it started for this user.

Tune keeps a sweep's state as pickled Python, and Ray 2.60 unpickles it (cloudpickle) when a sweep
resumes: tuner.pkl (`Tuner.restore`), the newest experiment_state-*.json, whose trial entries and
CLOUDPICKLE_FALLBACK values are cloudpickle (`ExperimentAnalysis`, and the restored `fit`, which also
loads basic-variant-state-*.json, callback-states-*.pkl and each errored trial's error.pkl).
Unpickling runs whatever code the file names, and Tune's pickles carry code objects, so no
allow-list of classes makes them safe: the folder itself must be trusted before Tune reads it.

So a new sweep gets an owner marker, {sweep}/.tcam-ray-owner.json: a random nonce and its
HMAC-SHA256 under this user's key, and a folder whose Tune experiment holds anything resumes only if
its marker verifies under that key; otherwise `tcam-ray tune` stops before Ray starts. The key is
$TCAM_RAY_KEY_FILE, else $XDG_CONFIG_HOME/tcam-ray/key, else ~/.config/tcam-ray/key: 32 random bytes
in hex, made on first use with mode 0600. To resume your sweeps on another machine, copy the key
file there. `--trust-sweep-state` marks a sweep you started before tcam-ray wrote markers.

With run.storage on a URI (s3://...) Tune's state lives there, but the marker stays in the local
sweep folder (beside sweep.yaml): it vouches for the sweep that folder names, wherever run.storage
keeps its Tune state. A marker proves who started the sweep, not what its files hold now: anyone who
can write into your sweep folder or your run.storage can still plant a pickle there.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Callable

from ..config import ConfigError, is_uri
from ..io import atomic_write_text

MARKER = ".tcam-ray-owner.json"
KEY_ENV = "TCAM_RAY_KEY_FILE"
TRUST_OPTION = "--trust-sweep-state"
PURPOSE = b"tcam-ray sweep owner v1\0"  # so that this key's tags mean nothing elsewhere
MAX_MARKER_BYTES = 4096


def key_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "tcam-ray" / "key"


def read_key(path: Path) -> bytes | None:
    """The key in `path`, or None when there is none yet."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ConfigError(f"{path}: not a tcam-ray key (64 hex digits): point {KEY_ENV} at your key file, or "
                          "remove this one to make a new key (sweeps marked with the old one then need it back)")
    return key


def create_key(path: Path) -> bytes:
    """A new random key, never visible half-written or to other users; of two first uses at once, both
    keep the key that was linked first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
        handle.flush()
        os.fsync(handle.fileno())  # a crash must not leave an empty key that sweeps were marked with
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return read_key(path)


def user_key() -> bytes:
    return read_key(key_path()) or create_key(key_path())


def owner_tag(key: bytes, nonce: str) -> str:
    return hmac.new(key, PURPOSE + nonce.encode(), hashlib.sha256).hexdigest()


def mark_owner(sweep_dir: Path) -> Path:
    nonce = secrets.token_hex(16)
    marker = {"nonce": nonce, "hmac_sha256": owner_tag(user_key(), nonce)}
    return atomic_write_text(Path(sweep_dir) / MARKER, json.dumps(marker) + "\n")


def read_marker(path: Path) -> tuple[str, str] | None:
    """(nonce, tag), or None for a file that is no marker."""
    try:
        if path.stat().st_size > MAX_MARKER_BYTES:
            return None
        marker = json.loads(path.read_text())
        nonce, tag = marker["nonce"], marker["hmac_sha256"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return (nonce, tag) if isinstance(nonce, str) and isinstance(tag, str) else None


def why_not_owned(sweep_dir: Path) -> str | None:
    """None when the sweep folder's marker verifies under this user's key, else why it does not."""
    path = Path(sweep_dir) / MARKER
    if not path.is_file():
        return f"it has no owner marker ({MARKER})"
    marker = read_marker(path)
    if marker is None:
        return f"its owner marker {MARKER} is unreadable"
    key = read_key(key_path())
    if key is None or not hmac.compare_digest(owner_tag(key, marker[0]), marker[1]):
        return "its owner marker was made with another key"
    return None


def holds_tune_state(experiment: str) -> bool:
    """Anything at all in Tune's experiment folder counts: even a sweep started anew there ends by
    reading the newest experiment_state-*.json it finds."""
    if not is_uri(experiment):
        folder = Path(experiment)
        return folder.is_dir() and any(folder.iterdir())
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(experiment)
    return bool(filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)))


def refusal(sweep_dir: Path, experiment: str, why: str) -> str:
    return (f"{sweep_dir}: not resuming this sweep: its Tune state ({experiment}) is pickled Python that could "
            f"run code when loaded, and {why}, so it was not started by tcam-ray under this user's key ({key_path()}). "
            "Resume only your own sweeps (to resume yours on another machine, copy that key file there), or choose "
            f"another run.name; only for a sweep you started yourself before tcam-ray marked sweeps, add {TRUST_OPTION}")


def check_sweep_folder(sweep_dir: Path, experiment: str, trust_state: bool = False,
                       say: Callable[[str], None] = print) -> bool:
    """Before Ray starts or anything is written: refuse to resume a sweep that is not this user's, unless
    `trust_state` (the user's word that it is theirs). True when the folder is to be marked as this
    user's: a new sweep, or a trusted one."""
    if not holds_tune_state(experiment):
        return True
    why = why_not_owned(sweep_dir)
    if why is None:
        return False
    if not trust_state:
        raise ConfigError(refusal(sweep_dir, experiment, why))
    say(f"{TRUST_OPTION}: trusting the Tune state in {experiment} as yours; marking {sweep_dir} as your sweep "
        f"({MARKER})")
    return True
