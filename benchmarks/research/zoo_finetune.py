"""Fine-tune a zoo diffusion model from its committed weights into a candidate export, with the
timestep density focused on a range of noise levels (the recipe's `timestep_focus`), to test a fix
before promoting anything: measure the candidate with `benchmarks/research/sampler_marginals.py
--candidate DIR/export` or `diffaudit zoo check --candidate DIR/export`.

Measured (synthfaces-ddpm, 12,000 -> 13,000 steps, half of each batch at t in [600, 1000),
lr ~5e-5 from the recipe's cosine schedule, 2.1 s/step on 2 cores): short hair 0.367 at 50 DDIM
steps on seeds 0-999 (0.364 before; training 0.30), so the hair-length gap is not a matter of
how much the high-noise levels are trained (benchmarks/results/sampler_marginals_ddpm_focus_ft13000.json).

    python benchmarks/research/zoo_finetune.py synthfaces-ddpm --steps 13000 --focus 600 1000 --share 0.5 --out DIR
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import typer

from audit.zoo import zoo_path
from audit.zoo.recipes import RECIPES, DiffusionRecipe
from audit.zoo.train_diffusion import train


def main(model: str = typer.Argument(..., help="A zoo diffusion model (synthfaces-ddpm, synthfaces-t2i)."),
         steps: int = typer.Option(..., help="The step to train to (the committed weights' step + the fine-tune's)."),
         focus: tuple[int, int] = typer.Option((600, 1000), help="Timestep range [low, high) to focus on."),
         share: float = typer.Option(0.5, help="Share of each batch drawn from the focus range."),
         out: Path = typer.Option(..., help="Work folder: checkpoints in OUT/work, the candidate in OUT/export."),
         threads: int = typer.Option(2)):
    recipe = RECIPES.get(model)
    if not isinstance(recipe, DiffusionRecipe):
        raise typer.BadParameter(f"{model} is not a zoo diffusion model; choose one of "
                                 f"{', '.join(n for n, r in RECIPES.items() if isinstance(r, DiffusionRecipe))}")
    torch.set_num_threads(threads)
    recipe = dataclasses.replace(recipe, steps=steps, timestep_focus=focus, timestep_focus_share=share)
    train(recipe, out / "work", out / "export", export_every=500, warm_start_dir=zoo_path(model),
          log=typer.echo)


if __name__ == "__main__":
    typer.run(main)
