"""Loading weights into models, kept apart from the architectures (timm style).

Sources: torchvision's ImageNet weights (downloaded through torch.hub, or
found in its cache) and local files: a plain torchvision state dict, or one of
our own checkpoints (possibly wrapped in {"state_dict": ...}, DDP "module." or
torch.compile "_orig_mod." prefixes) whose encoder part is found by its
`conv1.weight` key wherever it sits ("encoder.", "classifier.encoder.", ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from ..errors import TcamRayError
from ..io import UnreadableFileError, load_tensors

StateDict = dict[str, Tensor]

# Wrapping keys under which training code commonly nests the state dict.
_NESTING_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes added by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_KEYS_SHOWN = 12


class WeightsMismatchError(TcamRayError, RuntimeError):
    """A state dict does not fit a module: names the missing, unexpected and mis-shaped keys (one line)."""


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (typically: no network)."""


def read_state_dict(path: str | Path) -> StateDict:
    """Read a state dict from a file, unwrapping nesting and wrapper prefixes."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{path}: weights file not found")
    obj = load_tensors(path)
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: object, source: str = "<state dict>") -> StateDict:
    """Return the tensor mapping inside `obj` with DDP/compile prefixes removed."""
    while isinstance(obj, Mapping) and not _is_tensor_mapping(obj):
        nested = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            raise UnreadableFileError(
                f"{source}: no state dict found; top-level keys are {sorted(map(str, obj))[:_MAX_KEYS_SHOWN]}"
                f" (expected tensors, or one of {list(_NESTING_KEYS)} holding them)"
            )
        obj = nested
    if not isinstance(obj, Mapping):
        raise UnreadableFileError(f"{source}: expected a state dict, got {type(obj).__name__}")
    return {_strip_wrapper_prefixes(k): v for k, v in obj.items()}


def extract_submodule(state: StateDict, anchor_key: str) -> StateDict:
    """Keys of the submodule owning `anchor_key` (e.g. "conv1.weight"), its prefix removed.

    With the anchor at top level the state dict is returned unchanged; with
    several candidate prefixes the shortest wins.
    """
    if anchor_key in state:
        return dict(state)
    prefixes = sorted(
        (k[: -len(anchor_key)] for k in state if k.endswith("." + anchor_key)), key=len
    )
    if not prefixes:
        return dict(state)
    prefix = prefixes[0]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_strict(module: nn.Module, state: StateDict, source: str) -> None:
    """`module.load_state_dict(state)` that reports every mismatch in one clear error."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mis_shaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected.keys() & state.keys()
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mis_shaped:
        parts = [f"weights from {source} do not fit {type(module).__name__}"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped)):
            if keys:
                shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
                more = f", ... ({len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else ""
                parts.append(f"{title} keys ({len(keys)}): {shown}{more}")
        raise WeightsMismatchError("; ".join(parts))
    module.load_state_dict(state, strict=True)


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a whole module (e.g. a classifier checkpoint) from a local file, strictly."""
    load_strict(module, read_state_dict(path), source=str(path))


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load an encoder from a torchvision ResNet state dict or from our checkpoint's encoder part."""
    state = extract_submodule(read_state_dict(path), anchor_key="conv1.weight")
    load_strict(encoder, _drop_classifier(state, encoder), source=str(path))


def load_torchvision_weights(encoder: nn.Module, tv_weights: WeightsEnum, arch: str) -> None:
    """Load torchvision's pretrained weights (fetched through torch.hub, or from its cache)."""
    try:
        state = tv_weights.get_state_dict(progress=False, check_hash=True)
    except OSError as err:  # urllib's URLError and socket errors are OSErrors
        file_name = tv_weights.url.rsplit("/", 1)[-1]
        cache = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        raise PretrainedUnavailableError(
            f"cannot fetch ImageNet weights for {arch} from {tv_weights.url} ({err}); "
            f"this machine looks offline. Download that file elsewhere and pass "
            f"`weights: PATH` (build_encoder(..., weights=PATH)) instead of `pretrained: imagenet`, "
            f"or copy it to {cache}."
        ) from err
    load_strict(encoder, _drop_classifier(state, encoder), source=f"torchvision {tv_weights}")


def _drop_classifier(state: StateDict, encoder: nn.Module) -> StateDict:
    """Remove torchvision's ImageNet `fc.*` layer, which an encoder does not have."""
    if any(name == "fc" for name, _ in encoder.named_children()):
        return state
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _is_tensor_mapping(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _strip_wrapper_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key
