"""Typed YAML configs: dataclass schemas, chained `base:` includes, dotted overrides.

A config file is a nested YAML mapping mirroring the dataclasses of
`tcam_ray.config.schema`. Loading is strict: an unknown key or a value of the
wrong type is a `ConfigError` that names the key (dotted), the file it came
from, and the closest valid key; a key the schema retired (a table the caller
passes) is an error that says why it went. A file may name one `base:` file
(relative to itself) whose values it overrides, and that base may name a base
of its own, to any depth: the chain is merged bottom-up, so the top file wins.
A file reached twice along a chain is a `ConfigError` naming the cycle.

The configs that ship inside the package (tcam_ray/configs/NAME.yaml) are named
by NAME alone, on the command line and in `base:`: a bare name (no folder, no
.yaml/.yml suffix) that is not an existing file is the packaged config of that name.

Across process boundaries (Ray workers, Tune trials) a config travels as the
plain nested dict of `to_dict`, and `from_dict` rebuilds the typed object.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, TypeVar, Union, get_args, get_origin

import yaml

from ..errors import TcamRayError

T = TypeVar("T")
BASE_KEY = "base"


class ConfigError(TcamRayError, ValueError):
    """A config file, override or value that does not fit the schema."""


CONFIG_SUFFIXES = (".yaml", ".yml")


def packaged_configs_dir() -> Path:
    return Path(str(importlib.resources.files("tcam_ray").joinpath("configs")))


def packaged_configs() -> dict[str, Path]:
    """The configs shipped inside the package, by name (file name without .yaml)."""
    return dict(sorted((path.stem, path) for path in packaged_configs_dir().glob("*.yaml")))


def config_summary(path: Path) -> str:
    """The first line of a config file's leading comment ('' without one)."""
    with path.open() as lines:
        first = lines.readline().strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def is_config_name(text: str) -> bool:
    """A packaged config's name, not a path: no folder and no YAML suffix."""
    return "/" not in text and "\\" not in text and Path(text).suffix not in CONFIG_SUFFIXES


def resolve_config_file(given: str | Path, folder: Path | None = None) -> Path:
    """The file `given` names (relative to `folder` when given, else to the working folder), or, when
    no such file exists and `given` is a bare name, the packaged config of that name (a folder
    of that name in the working folder, such as a `demo/` output folder, is passed over)."""
    path = Path(given) if folder is None else folder / given
    text = str(given)
    if path.is_file() or not is_config_name(text):
        return path
    shipped = packaged_configs()
    if text in shipped:
        return shipped[text]
    raise ConfigError(f"no config file or packaged config named {text!r}; packaged configs: {', '.join(shipped)}")


def read_yaml_mapping(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        hint = ""
        if path.suffix in CONFIG_SUFFIXES and path.stem in packaged_configs():
            hint = f" (the packaged config of that name is --config {path.stem}, without folder or suffix)"
        raise ConfigError(f"config file not found: {path}{hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file, so not a YAML config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path) -> tuple[dict, list[Path]]:
    """The raw mapping of a config file with its chain of `base:` files merged under it
    (each base relative to the file naming it, or a packaged config's name; nearer files win),
    and the files it came from, the top file first."""
    path = resolve_config_file(path)
    sources = [path]
    resolved = [path.resolve()]
    layers = []
    current = path
    while True:
        data = read_yaml_mapping(current)
        base_name = data.pop(BASE_KEY, None)
        layers.append(data)
        if base_name is None:
            break
        if not isinstance(base_name, str):
            raise ConfigError(f"{current}: '{BASE_KEY}' must be one file name, got {base_name!r}")
        try:
            base_path = resolve_config_file(base_name, folder=current.parent).resolve()
        except ConfigError as err:
            raise ConfigError(f"{current}: '{BASE_KEY}: {base_name}': {err}") from None
        if base_path in resolved:
            cycle = resolved[resolved.index(base_path):] + [base_path]
            raise ConfigError("config base cycle: " + " -> ".join(map(str, cycle)))
        sources.append(base_path)
        resolved.append(base_path)
        current = base_path
    merged: dict = {}
    for layer in reversed(layers):
        merged = deep_merge(merged, layer)
    return merged, sources


# --------------------------------------------------------------------------- schema walking


def schema_fields(schema: type) -> dict[str, tuple[type, dataclasses.Field]]:
    hints = typing.get_type_hints(schema)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(schema)}


def closest_name(name: str, valid: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.5)
    return close[0] if close else None


def unknown_key_error(dotted: str, valid: Iterable[str], origin: str) -> ConfigError:
    parent, _, name = dotted.rpartition(".")
    prefix = f"{parent}." if parent else ""
    close = closest_name(name, valid)
    hint = f"did you mean '{prefix}{close}'?" if close else "valid keys here: " + ", ".join(sorted(valid))
    return ConfigError(f"unknown config key '{dotted}'{origin}; {hint}")


def type_at_path(schema: type, dotted: str, origin: str = "") -> type:
    """The annotated type of a dotted key, or a ConfigError naming the closest key."""
    current: Any = schema
    walked = []
    for part in dotted.split("."):
        walked.append(part)
        if not (isinstance(current, type) and dataclasses.is_dataclass(current)):
            raise ConfigError(f"config key '{'.'.join(walked[:-1])}' has no sub-keys{origin}")
        fields = schema_fields(current)
        if part not in fields:
            raise unknown_key_error(".".join(walked), fields, origin)
        current = fields[part][0]
    return current


# --------------------------------------------------------------------------- typing values


def type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if is_union(tp):
        return " or ".join(type_name(a) for a in get_args(tp))
    origin = get_origin(tp)
    if origin in (list, tuple):
        args = get_args(tp)
        return f"a list of {type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def coerce(value: Any, tp: Any, key: str, origin: str = "") -> Any:
    """`value` checked (and safely converted) to the annotated type `tp`."""
    kind = get_origin(tp)

    def wrong() -> ConfigError:
        return ConfigError(f"config key '{key}'{origin}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})")

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong()
        return from_dict(tp, value, prefix=key, origin=origin)
    if is_union(tp):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, origin)
            except ConfigError:
                pass
        raise wrong()
    if kind is Literal:
        if value in get_args(tp):
            return value
        close = closest_name(str(value), [str(a) for a in get_args(tp)])
        suffix = f"; did you mean {close!r}?" if close else ""
        raise ConfigError(f"config key '{key}'{origin}: {value!r} is not {type_name(tp)}{suffix}")
    if kind in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        (item_type,) = get_args(tp)[:1] or (Any,)
        items = [coerce(v, item_type, f"{key}[{i}]", origin) for i, v in enumerate(value)]
        return items if kind is list else tuple(items)
    if kind is dict:
        if not isinstance(value, dict):
            raise wrong()
        _, value_type = get_args(tp) or (str, Any)
        return {str(k): coerce(v, value_type, f"{key}.{k}", origin) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong()
    if tp is float:
        number = float_value(value)
        if number is None:
            raise wrong()
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}'{origin}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong()
    raise ConfigError(f"config key '{key}': unsupported annotation {tp!r} in the schema")


def float_value(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    return None


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf that differs between two nested config dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        dotted, before, after = f"{prefix}{key}", old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += changed_keys(before, after, f"{dotted}.")
        elif before != after:
            changes.append((dotted, before, after))
    return changes


def from_dict(schema: type[T], data: dict, prefix: str = "", origin: str = "") -> T:
    """Build the dataclass `schema` from a nested dict, rejecting unknown keys and bad types."""
    fields = schema_fields(schema)
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise unknown_key_error(dotted, fields, origin)
        field_type, field = fields[key]
        if dataclasses.is_dataclass(field_type) and isinstance(value, dict):
            value = deep_merge(to_dict(default_of(field)), value)  # a section's own defaults under its keys
        values[key] = coerce(value, field_type, dotted, origin)
    try:
        return schema(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config section '{prefix or '<top>'}'{origin}: {err}") from None


def default_of(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def to_dict(config: Any) -> dict:
    """The plain nested dict of a config (what crosses to Ray workers and Tune)."""
    return dataclasses.asdict(config)


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text}: an override must look like section.key=value")
    return key, value


def override_value(raw: str, tp: Any) -> Any:
    """A command-line string as the value YAML would give it; plain strings stay verbatim."""
    if tp is str:
        return raw
    if is_union(tp) and str in get_args(tp):
        return None if raw.strip() in ("", "null", "~") else raw
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def apply_overrides(schema: type, data: dict, overrides: Iterable[str],
                    retired: Mapping[str, str] | None = None) -> dict:
    data = dict(data)
    for text in overrides:
        key, raw = parse_override(text)
        origin = f" (in --set {text})"
        if retired and key in retired:
            raise retired_key_error(key, retired[key], origin)
        tp = type_at_path(schema, key, origin=origin)
        set_dotted(data, key, override_value(raw, tp))
    return data


# --------------------------------------------------------------------------- retired keys
# `retired` maps a dotted key the schema no longer has to why it went. A config file or --set
# naming one is an error saying so; configs saved by older versions (checkpoints) drop them.


def has_dotted(data: dict, dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def without_dotted(data: dict, dotted: str) -> dict:
    """A copy of `data` without the dotted key (the dicts along its path copied, the rest shared)."""
    if not has_dotted(data, dotted):
        return data
    head, _, rest = dotted.partition(".")
    data = dict(data)
    if rest:
        data[head] = without_dotted(data[head], rest)
    else:
        del data[head]
    return data


def retired_key_error(dotted: str, why: str, origin: str = "") -> ConfigError:
    return ConfigError(f"config key '{dotted}'{origin} was removed: {why}")


def check_retired(data: dict, retired: Mapping[str, str], origin: str = "") -> None:
    for dotted, why in retired.items():
        if has_dotted(data, dotted):
            raise retired_key_error(dotted, why, origin)


def drop_retired(data: dict, retired: Mapping[str, str]) -> dict:
    for dotted in retired:
        data = without_dotted(data, dotted)
    return data


def load_config(schema: type[T], path: str | Path | None = None, overrides: Iterable[str] = (),
                retired: Mapping[str, str] | None = None) -> T:
    """Schema defaults <- config file (with its bases) <- `--set key=value` overrides.
    A key of `retired` (dotted key -> why it was removed) in the file or --set is an error."""
    data, sources = read_config_file(path) if path is not None else ({}, [])
    files = " or its base ".join(map(str, sources))
    if retired:
        check_retired(data, retired, origin=f" (in {files})")
    data = apply_overrides(schema, data, overrides, retired)
    origin = f" (in {files}, or --set)" if sources else ""
    return from_dict(schema, data, origin=origin)


def dump_config(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
