from __future__ import annotations

import typer

from tcam_ray.config import dump_config

from .common import ConfigOption, SetOption, load_config


def config(config: ConfigOption = None, set_: SetOption = None):
    """Print the resolved config: defaults, then --config, then --set, with paths made absolute."""
    typer.echo(dump_config(load_config(config, set_)), nl=False)
