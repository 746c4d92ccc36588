"""The bundled SynthFaces zoo: world generator, training recipes and committed weights."""

from __future__ import annotations

from pathlib import Path

from audit.zoo.recipes import RECIPES

WEIGHTS_DIR = Path(__file__).parent / "weights"
# Exports of training runs in progress (`zoo train --export-dir audit/zoo/wip/NAME`), committed
# between sessions; never loaded as the zoo's model until copied into WEIGHTS_DIR.
WIP_DIR = Path(__file__).parent / "wip"


def zoo_path(name: str) -> Path:
    """Directory of a zoo model's committed weights."""
    if name not in RECIPES:
        raise KeyError(f"unknown zoo model {name!r}; available: {', '.join(RECIPES)}")
    return WEIGHTS_DIR / name


def is_trained(name: str) -> bool:
    return (zoo_path(name) / "training.json").exists()


def load_adapter(name: str, device: str = "cpu"):
    """A zoo diffusion model as a ModelAdapter, for scripts and notebooks (suites name it as
    `source: zoo:NAME`, which also resolves its sampler defaults)."""
    from audit.models.adapter import ModelAdapter

    if not is_trained(name):
        raise FileNotFoundError(f"zoo model {name!r} has no weights: run `diffaudit zoo train {name}`")
    return ModelAdapter.from_directory(zoo_path(name), model_id=f"zoo:{name}", device=device)
