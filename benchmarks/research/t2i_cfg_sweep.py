"""How classifier-free guidance changes what a synthfaces-t2i attribute prompt gives.

Classifier-free guidance at scale w samples a sharpened p(x|c) p(c|x)^(w-1): on the step-8,000
export 'with blond hair' gave blond in 31/32 samples at CFG 1, 27/32 at CFG 2 and 12/32 at CFG 3,
the rest mostly gray (benchmarks/results/t2i_cfg_sweep_step8000.json). This is why `zoo check`
measures the t2i bars at CFG 1 by default. Labels: synthfaces-eval, seeds 0..n-1, 50 DDIM steps.

    python benchmarks/research/t2i_cfg_sweep.py [MODEL_DIR] --n 32 --json FILE
"""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from audit.files import atomic_write_json
from audit.zoo import zoo_path
from audit.zoo.check import diffusion_model, generate_in_batches, label_probabilities
from audit.zoo.synthfaces import ATTRIBUTES


def main(model_dir: Path = typer.Argument(None, help="A synthfaces-t2i export (default: the zoo's)."),
         n: int = typer.Option(32, help="Samples per prompt and scale."),
         scales: list[float] = typer.Option([1.0, 1.5, 2.0, 3.0], "--scale", help="CFG scales."),
         colours: list[str] = typer.Option(["blond", "gray"], "--colour", help="Hair colours to prompt."),
         steps: int = typer.Option(50),
         threads: int = typer.Option(2),
         json_file: Path | None = typer.Option(None, "--json")):
    torch.set_num_threads(threads)
    adapter = diffusion_model("synthfaces-t2i", model_dir)
    results = {"model": str(model_dir or zoo_path("synthfaces-t2i")), "n": n, "steps": steps, "counts": {}}
    for scale in scales:
        for colour in colours:
            prompt = f"a photo of a person with {colour} hair"
            images = generate_in_batches(adapter, list(range(n)), 64, [prompt] * n, steps=steps,
                                         guidance_scale=scale)
            labels = label_probabilities(images)["hair_color"].argmax(1)
            counts = {c: int((labels == i).sum()) for i, c in enumerate(ATTRIBUTES["hair_color"])}
            results["counts"][f"CFG {scale}: {prompt}"] = counts
            typer.echo(f"CFG {scale} '{prompt}': {counts}")
    if json_file is not None:
        atomic_write_json(json_file, results)


if __name__ == "__main__":
    typer.run(main)
