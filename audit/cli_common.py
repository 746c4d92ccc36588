"""What every command group of the CLI shares, the core's and plug-ins' (`diffaudit zoo`): user
mistakes as one line on stderr with exit code 2."""

from __future__ import annotations

import re

import typer


def fail(message: str) -> None:
    """A user mistake: one line on stderr, exit code 2, no traceback. Control characters (a path
    given with a newline in it) are shown escaped, so the line stays one line."""
    typer.echo("error: " + re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], message), err=True)
    raise typer.Exit(2)


def check_device(device: str) -> None:
    """--device must name cpu or a cuda device torch can see."""
    if device not in ("cpu", "cuda"):
        fail(f"--device must be cpu or cuda, got {device!r}")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but no CUDA device is visible to torch; use --device cpu")
