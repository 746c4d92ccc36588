"""How should a transformer's image tokens be pooled for h-space probes? Probe accuracy per pooling.

Samples a text-to-image transformer model (SD3, Flux or PixArt directory) recording the middle
block's image tokens unpooled, labels each final image with two pixel attributes a labeler-free
test can compute (bright: mean luminance above the batch median; left: left half brighter than
the right half, a spatial attribute a single mean over the tokens cannot see), and fits the
project's per-step probes (audit.probes.train.fit_heads) on h average-pooled to 1x1, 2x2, 4x4,
8x8 cells and on all tokens. Prints and stores validation accuracy per pooling (mean over steps
and at the last step).

    python benchmarks/research/hspace_pooling.py MODEL_DIR [--n 160] [--steps 4] --json FILE
"""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from audit.models.adapter import ModelAdapter
from audit.probes.train import fit_heads
from audit.store import atomic_write_json

PROMPTS = ["a photo of a person", "a photo of a doctor", "a photo of a nurse", "a photo of a teacher"]


def main(model: Path, n: int = 160, steps: int = 4, guidance_scale: float = 2.0, batch: int = 16,
         json: Path | None = None, threads: int = 1) -> None:
    torch.set_num_threads(threads)
    adapter = ModelAdapter.from_directory(model)
    rows, cols = adapter.family.token_grid()
    adapter.hspace_pool = max(rows, cols)  # record every token; pooled below
    hs, images = [], []
    for start in range(0, n, batch):
        seeds = list(range(start, min(n, start + batch)))
        out = adapter.generate(seeds, prompts=[PROMPTS[s % len(PROMPTS)] for s in seeds], steps=steps,
                               guidance_scale=guidance_scale, record_h=True)
        hs.append(torch.stack(out.h))
        images.append(out.images)
    H, images = torch.cat(hs, 1), torch.cat(images)
    luminance = images.mean(1)
    half = luminance.shape[-1] // 2
    labels = {"bright": (luminance.mean((1, 2)) > luminance.mean((1, 2)).median()).long(),
              "left": (luminance[..., :half].mean((1, 2)) > luminance[..., half:].mean((1, 2))).long()}
    tokens = H.reshape(steps, H.shape[1], -1, rows, cols)  # [S, N, D, rows, cols]
    results = {"model": str(model), "family": adapter.family.name, "n": n, "steps": steps, "grid": [rows, cols],
               "dim": tokens.shape[2], "label_shares": {k: float(v.float().mean()) for k, v in labels.items()},
               "accuracy": {}}
    for cells in sorted({1, 2, 4, 8, max(rows, cols)}):
        if rows % cells or cols % cells:
            continue
        pooled = torch.nn.functional.avg_pool2d(tokens.flatten(0, 1), (rows // cells, cols // cells))
        features = pooled.reshape(steps, n, -1)
        name = "all tokens" if cells == max(rows, cols) else f"{cells}x{cells}"
        results["accuracy"][name] = {}
        for attribute, y in labels.items():
            accuracy = fit_heads(features, y, 2)[4]
            results["accuracy"][name][attribute] = {"mean": round(float(accuracy.mean()), 3),
                                                    "last_step": round(float(accuracy[-1]), 3),
                                                    "features": features.shape[-1]}
            print(f"{name:>10} {attribute:>6}: val accuracy mean {accuracy.mean():.3f}, last step "
                  f"{accuracy[-1]:.3f} ({features.shape[-1]} features)")
    if json:
        atomic_write_json(json, results)


if __name__ == "__main__":
    typer.run(main)
