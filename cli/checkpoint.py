"""`tcam-ray checkpoint verify|convert`: check checkpoint folders, or bring old ones of yours up to date."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Check checkpoint folders, or convert your own old ones.", no_args_is_help=True)


@app.command()
def verify(
    folders: Annotated[list[Path], typer.Argument(help="Checkpoint folders (e.g. RUN/checkpoints/best-corloc).",
                                                  show_default=False)],
):
    """Check that each checkpoint is whole and safe to load: meta.json and config.yaml parse, state.pt has the size and SHA-256 meta.json records and holds only tensors and plain values (nothing is unpickled)."""
    from tcam_ray.train.checkpoints import checkpoint_config, load_state, read_meta

    for folder in folders:
        load_state(folder)  # reads meta.json, checks the size and hash of state.pt, unpickles nothing
        meta = read_meta(folder)
        checkpoint_config(folder)
        typer.echo(f"ok {folder}: stage {meta.get('stage')}, epoch {meta.get('epoch')}, "
                   f"classes {', '.join(meta.get('classes', []))}")


@app.command()
def convert(
    folder: Annotated[Path, typer.Argument(help="A checkpoint folder of yours written by an older tcam-ray.",
                                           show_default=False)],
    trust: Annotated[bool, typer.Option("--trust", help="Also rewrite a state.pt that holds Python objects besides "
                                        "tensors: it is unpickled, which runs whatever code it names. Only for "
                                        "checkpoints you wrote yourself.")] = False,
):
    """Rewrite an old checkpoint in place as this tcam-ray writes them: meta.json gets the size and checksum of state.pt (checked on every load), and with --trust a state.pt that needs pickle is saved again as tensors and plain values."""
    from tcam_ray.train.checkpoints import convert_checkpoint

    meta = convert_checkpoint(folder, trust)
    typer.echo(f"converted {folder}: stage {meta.get('stage')}, epoch {meta.get('epoch')}, "
               f"state.pt {meta['state_bytes']} bytes, sha256 {meta['state_sha256'][:16]}")
