"""Does the sampler change the bias a model is audited for? Marginals of synthfaces-ddpm under
deterministic DDIM (eta 0, the probability-flow ODE) and stochastic
DDIM (eta 1, as ancestral DDPM; the zoo DDPM's own sampler), on the same seeds, judged by synthfaces-eval.

A perfectly trained model draws the same distribution either way; an imperfect one need not, and
the gap shows how much of a measured bias is the sampler's. On the 12,000-step export (seeds 0-999)
the share of short hair was 0.364 at eta 0 with 50 steps, 0.359 at eta 0 with 200 steps and 0.332 at
eta 1 with 50 steps (training 0.30): more steps do not close it, so it is not discretisation error.

    python benchmarks/research/sampler_marginals.py [--candidate EXPORT_DIR] [--eta 0 --eta 1] --json FILE
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from audit.files import atomic_write_json
from audit.zoo import zoo_path
from audit.zoo.check import diffusion_model, generate_in_batches, label_probabilities, observed_marginals
from audit.zoo.source import zoo_revision
from audit.zoo.synthfaces import ATTRIBUTES, BIASED_WORLD


def main(candidate: Path | None = typer.Option(None, help="An export of synthfaces-ddpm (default: the zoo's)."),
         eta: list[float] = typer.Option([0.0, 1.0], help="DDIM eta values to compare."),
         steps: int = typer.Option(50),
         n: int = typer.Option(1000),
         first_seed: int = typer.Option(0),
         batch_size: int = typer.Option(100),
         threads: int = typer.Option(2),
         json_file: Path | None = typer.Option(None, "--json")):
    torch.set_num_threads(threads)
    adapter = diffusion_model("synthfaces-ddpm", candidate)
    seeds = list(range(first_seed, first_seed + n))
    results = []
    for value in eta:
        start = time.perf_counter()
        images = generate_in_batches(adapter, seeds, batch_size, steps=steps, eta=value)
        probs = label_probabilities(images)
        marginals = observed_marginals(probs, BIASED_WORLD.marginals)
        gaps = {a: gap for a, (_, gap) in marginals.items()}
        named = {a: dict(zip(ATTRIBUTES[a], s.round(3).tolist(), strict=True)) for a, (s, _) in marginals.items()}
        results.append({"eta": value, "seconds": round(time.perf_counter() - start, 1), "shares": named,
                        "gap_to_training": {a: round(g, 3) for a, g in gaps.items()}})
        typer.echo(f"eta {value:g}: " + ", ".join(f"{a} gap {g:.3f}" for a, g in gaps.items()))
    if json_file is not None:
        source = candidate or zoo_path("synthfaces-ddpm")
        atomic_write_json(json_file, {"model": str(source), "revision": zoo_revision(source), "steps": steps,
                                      "seeds": f"{first_seed}-{first_seed + n - 1}", "labeler": "synthfaces-eval",
                                      "training": {a: dict(zip(ATTRIBUTES[a], BIASED_WORLD.marginals[a], strict=True))
                                                   for a in ATTRIBUTES},
                                      "results": results})


if __name__ == "__main__":
    typer.run(main)
