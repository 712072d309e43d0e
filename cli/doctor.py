"""`tcam-ray doctor`: are the compiled ops (CRF filter, seed sampler) built, current, and for which devices."""
from __future__ import annotations

import json
from typing import Annotated

import typer

from .common import ConfigOption, SetOption, load_config


def _lines(info: dict) -> list[str]:
    def yes_no(flag) -> str:
        return "yes" if flag else "no"

    lines = [
        f"compiled ops built:  {yes_no(info['built'])}",
        f"CPU kernels:         {yes_no(info['cpu'])} (CRF filter, seed sampler)",
        f"CUDA kernels:        {yes_no(info['cuda'])}"
        + (f" (CRF filter; CUDA {info['cuda_version']}, archs {info['cuda_arch_list']})" if info["cuda"] else ""),
        f"built against torch: {info['torch_version']} (running {info['runtime_torch_version']})",
        f"source hash:         {info['source_hash']} (sources now {info['current_source_hash'] or 'not in this install'})",
        f"stale:               {yes_no(info['stale'])}",
    ]
    lines += [f"  - {reason}" for reason in info["stale_reasons"]]
    if info["cuda_device"]:
        lines.append(f"GPU:                 {info['cuda_device']}, supported: {yes_no(info['cuda_device_supported'])}")
    if info["error"]:
        lines.append(f"error:               {info['error']}")
    return lines


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the build facts as one JSON object.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Print whether the compiled ops (CRF filter, seed sampler) are built, for which GPU archs, and whether stale.

    Exit code 1 when the ops are missing or stale (or cannot serve the visible GPU).
    """
    from tcam_ray.ops.build_info import build_info

    load_config(config, set_)  # a config given here is checked too
    info = build_info()
    if as_json:
        print(json.dumps(info))
    else:
        print("\n".join(_lines(info)))
    broken = not info["built"] or info["stale"] or info["cuda_device_supported"] is False
    if broken:
        if not as_json:
            print(f"rebuild with: {info['rebuild_command']}")
        raise typer.Exit(code=1)
