"""The search space: dotted keys of the training config, each with one distribution, overlaid on
the config's plain nested dict (what crosses to Tune and to the workers) key by key.

    train.lr: {loguniform: [1e-4, 1e-1]}     log-uniform float in [low, high)
    tcam.max_p: {uniform: [0.4, 0.8]}        uniform float in [low, high)
    tcam.n: {choice: [0, 1, 2]}              one of the values, drawn at random
    tcam.direction: {grid: [before, both]}   every value (times num_samples)

Every key must exist in the training config and every value (or both bounds) must be one the
config accepts: checked here, before any trial starts, with the key and the closest valid one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, get_args

from ..config import Config, ConfigError, config_from_dict, to_dict
from ..config.loader import closest_name, coerce, is_union, set_dotted, type_at_path, type_name

KINDS = ("choice", "grid", "uniform", "loguniform")
# Set by the sweep itself: every trial trains asha.max_t epochs into its own run folder.
RESERVED = {"train.epochs": "asha.max_t sets it", "run.root": "each trial has its own run folder",
            "run.name": "each trial has its own run folder", "run.storage": "the sweep's run.storage holds every trial",
            "scale.address": "a sweep runs on one cluster",
            **{f"scale.{key}": "every trial takes the same resources (max_concurrent_trials is counted from them)"
               for key in ("num_workers", "cpus_per_worker", "use_gpu", "local_cpus")}}


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted key of the training config
    kind: str  # one of KINDS
    values: tuple  # choice/grid: the values; uniform/loguniform: (low, high)

    def domain(self):
        """The Tune domain sampling this dimension."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        return tune.loguniform(*self.values)

    def describe(self) -> str:
        if self.kind in ("uniform", "loguniform"):
            return f"{self.kind}[{self.values[0]:g}, {self.values[1]:g})"
        return f"{self.kind}{list(self.values)}"


def parse_space(space: dict, base: Config, source: str = "the sweep") -> list[Dimension]:
    """The dimensions of a sweep file's `space` mapping, each checked against the training config;
    errors name `source` (the sweep file)."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"sweep key 'space' (in {source}): give at least one dotted key, e.g. "
                          "'train.lr: {loguniform: [0.001, 0.1]}'")
    return [parse_dimension(str(key), spec, base, source) for key, spec in space.items()]


def parse_dimension(key: str, spec: Any, base: Config, source: str) -> Dimension:
    where = f"sweep key 'space.{key}' (in {source})"
    value_type = type_at_path(Config, key, origin=f" (a 'space' key of {source})")
    if key in RESERVED:
        raise ConfigError(f"{where}: {key} cannot be searched ({RESERVED[key]})")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: give one distribution, e.g. {{choice: [a, b]}} "
                          f"(one of {', '.join(KINDS)}), got {spec!r}")
    (kind, args), = spec.items()
    if kind not in KINDS:
        close = closest_name(str(kind), KINDS)
        hint = f"did you mean '{close}'?" if close else f"use one of {', '.join(KINDS)}"
        raise ConfigError(f"{where}: unknown distribution {kind!r}; {hint}")
    if kind in ("choice", "grid"):
        values = discrete_values(key, kind, args, value_type, where, source)
    else:
        values = range_bounds(key, kind, args, value_type, where)
    for value in values:
        check_in_config(base, key, value, where)
    return Dimension(key, kind, tuple(values))


def discrete_values(key: str, kind: str, args: Any, value_type, where: str, source: str) -> list:
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
    return [coerce(value, value_type, key, f" (in space.{key}.{kind} of {source})") for value in args]


def range_bounds(key: str, kind: str, args: Any, value_type, where: str) -> list[float]:
    if not takes_float(value_type):
        raise ConfigError(f"{where}: {kind} draws floats but {key} takes {type_name(value_type)}; "
                          "use choice or grid")
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"{where}: {kind} needs [low, high], got {args!r}")
    low, high = (coerce(value, float, f"space.{key}.{kind}") for value in args)
    if not low < high:
        raise ConfigError(f"{where}: {kind} low {low:g} must be below high {high:g}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low:g}")
    return [low, high]


def takes_float(value_type) -> bool:
    return value_type is float or (is_union(value_type) and float in get_args(value_type))


def check_in_config(base: Config, key: str, value: Any, where: str) -> None:
    """The training config with `value` at `key` must be one the schema accepts (ranges and all)."""
    try:
        config_from_dict(overlay(to_dict(base), {key: value}))
    except ConfigError as err:
        raise ConfigError(f"{where}: value {value!r} is refused by the training config: {err}") from None


def overlay(config: dict, values: dict[str, Any]) -> dict:
    """A deep copy of the nested config dict with `values` (dotted key -> value) set."""
    merged = copy.deepcopy(config)
    for key, value in values.items():
        set_dotted(merged, key, value)
    return merged


def param_space(base: Config, dimensions: list[Dimension]) -> dict:
    """Tune's param_space: the training config's nested dict with a Tune domain at each searched key."""
    return overlay(to_dict(base), {dim.key: dim.domain() for dim in dimensions})


def get_dotted(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def sampled_values(config: dict, dimensions: list[Dimension]) -> dict[str, Any]:
    """The values a trial's config holds at the searched keys."""
    return {dim.key: get_dotted(config, dim.key) for dim in dimensions}
