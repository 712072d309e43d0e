from __future__ import annotations

from typing import Annotated

import typer

from tcam_ray.config import dump_config
from tcam_ray.config.loader import config_summary, packaged_configs

from .common import ConfigOption, SetOption, load_config


def config(
    config: ConfigOption = None,
    set_: SetOption = None,
    list_: Annotated[bool, typer.Option("--list", help="List the configs that ship with tcam-ray, one per line with "
                                        "what it is for; each NAME works as --config NAME.")] = False,
):
    """Print the resolved config: defaults, then --config, then --set, with paths made absolute."""
    if list_:
        print_packaged_configs()
        return
    typer.echo(dump_config(load_config(config, set_)), nl=False)


def print_packaged_configs() -> None:
    shipped = packaged_configs()
    width = max(map(len, shipped))
    for name, path in shipped.items():
        typer.echo(f"{name:<{width}}  {config_summary(path)}".rstrip())
