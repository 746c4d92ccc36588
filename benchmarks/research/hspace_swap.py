"""How much of an attribute does h alone decide? An h-space control test for a zoo diffusion model.

Samples seeds 0..n-1 recording h (the mid-block output) at every step, labels them with
synthfaces-eval, then regenerates the first samples of each class with a sample of the other
class's h substituted at every step. The share whose label flips is how far the decoder reads
the attribute from h rather than from its skip connections: h-space guidance cannot move an
attribute that h does not carry. On the step-8,000 zoo models (25 steps, seeds 0-63, skin tone)
light -> dark flipped 3 of 16 synthfaces-ddpm samples and 1 of 16 synthfaces-t2i samples (CFG 2),
dark -> light 3 of 8 and 2 of 9 (benchmarks/results/hspace_swap_*_step8000.json).

    python benchmarks/research/hspace_swap.py synthfaces-t2i [--candidate EXPORT_DIR] --json FILE
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer

from audit.files import atomic_write_json
from audit.methods.base import Method
from audit.zoo import zoo_path
from audit.zoo.check import diffusion_model, label_probabilities
from audit.zoo.source import zoo_revision
from audit.zoo.synthfaces import ATTRIBUTES


class SubstituteH(Method):
    """Replaces each image's h, at every step, by the h its donor had at that step."""

    edits_h = True

    def __init__(self, donor_h: list[torch.Tensor]):
        self.donor_h = donor_h  # per step [N, C*h*w], in the batch's order

    def on_h(self, h: torch.Tensor, batch) -> torch.Tensor:
        return self.donor_h[batch.step_index].view_as(h).to(h.dtype)


def main(model: str = typer.Argument(..., help="synthfaces-ddpm or synthfaces-t2i"),
         candidate: Path | None = typer.Option(None, help="An export of the model (default: the zoo's)."),
         attribute: str = typer.Option("skin_tone", help=f"One of {', '.join(ATTRIBUTES)} (two classes)."),
         n: int = typer.Option(64, help="Samples drawn to find each class's members."),
         per_class: int = typer.Option(16, help="Samples of each class regenerated with the other's h."),
         steps: int = typer.Option(25),
         guidance_scale: float = typer.Option(2.0, help="Classifier-free guidance (text model only)."),
         prompt: str = typer.Option("a photo of a person"),
         threads: int = typer.Option(2),
         json_file: Path | None = typer.Option(None, "--json")):
    torch.set_num_threads(threads)
    classes = ATTRIBUTES.get(attribute, ())
    if len(classes) != 2:
        raise typer.BadParameter(f"{attribute!r}: use a two-class attribute "
                                 f"({', '.join(a for a, c in ATTRIBUTES.items() if len(c) == 2)})")
    adapter = diffusion_model(model, candidate)
    options = {"steps": steps}
    if adapter.conditional:
        options["guidance_scale"] = guidance_scale

    def prompts(k: int) -> list[str] | None:
        return [prompt] * k if adapter.conditional else None

    seeds = list(range(n))
    drawn = adapter.generate(seeds, prompts=prompts(n), record_h=True, **options)
    labels = label_probabilities(drawn.images)[attribute].argmax(1)
    members = [[s for s in seeds if labels[s] == c][:per_class] for c in range(2)]
    results = {"model": model, "revision": zoo_revision(candidate or zoo_path(model)), "attribute": attribute,
               "n": n, "steps": steps, "guidance_scale": options.get("guidance_scale"),
               "drawn": {c: int((labels == i).sum()) for i, c in enumerate(classes)}, "flips": {}}
    for source in range(2):
        targets, donors = members[source], members[1 - source]
        if not targets or not donors:
            typer.echo(f"no {classes[1 - source] if targets else classes[source]} sample among {n}: raise --n")
            raise typer.Exit(1)
        donor_of = [donors[i % len(donors)] for i in range(len(targets))]
        donor_h = [step_h[donor_of] for step_h in drawn.h]
        swapped = adapter.generate(targets, prompts=prompts(len(targets)), method=SubstituteH(donor_h), **options)
        flipped = int(np.sum(label_probabilities(swapped.images)[attribute].argmax(1) == 1 - source))
        key = f"{classes[source]} -> {classes[1 - source]}"
        results["flips"][key] = {"flipped": flipped, "of": len(targets)}
        typer.echo(f"{model} {attribute} {key} with the other's h at every step: {flipped}/{len(targets)} flip")
    if json_file is not None:
        atomic_write_json(json_file, results)


if __name__ == "__main__":
    typer.run(main)
