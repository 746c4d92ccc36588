"""Train the zoo's CNNs on SynthFaces ground truth: the two labelers and the FID extractor.

Labelers are trained on the uniform world (so they carry no prior toward the biased world's
majority classes) with augmentation that mimics diffusion-sample artefacts (noise, blur,
small shifts and colour jitter). After training, each labeler's confusion matrices are
measured on 10,000 held-out ground-truth images and saved beside its weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from audit.zoo.networks import SynthFacesCNN
from audit.zoo.recipes import ClassifierRecipe
from audit.zoo.synthfaces import ATTRIBUTES, PARAM_NAMES, UNIFORM_WORLD, WORLDS, generate

HELDOUT_SEED = 987_654_321
HELDOUT_N = 10_000


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise, blur, +-1 px shifts and mild brightness/contrast jitter, per image."""
    n = len(x)
    shifts = torch.randint(-1, 2, (2,), generator=generator).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    sigma = torch.rand(n, generator=generator) * 0.8
    kernel_x = torch.arange(-1, 2, dtype=torch.float32)
    weights = torch.exp(-kernel_x[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    weights = weights / weights.sum(1, keepdim=True)  # [n, 3]
    k2 = weights[:, :, None] * weights[:, None, :]  # [n, 3, 3]
    blurred = F.conv2d(F.pad(x.reshape(1, n * 3, 32, 32), (1, 1, 1, 1), mode="replicate"),
                       k2.repeat_interleave(3, 0)[:, None], groups=n * 3).reshape(n, 3, 32, 32)
    gain = 1 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.12
    bias = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.10
    noise = torch.randn(x.shape, generator=generator) * torch.rand(n, 1, 1, 1, generator=generator) * 0.08
    return (blurred * gain + bias + noise).clamp(-1, 1)


def build(recipe: ClassifierRecipe) -> SynthFacesCNN:
    torch.manual_seed(recipe.data_seed)
    n_reg = len(PARAM_NAMES) if recipe.kind == "features" else 0
    return SynthFacesCNN(recipe.channels, recipe.kernel_size, recipe.feature_dim, ATTRIBUTES, n_reg)


def train(recipe: ClassifierRecipe, workdir: Path, export_dir: Path, max_steps: int | None = None,
          log=print, heldout: int = HELDOUT_N) -> int:
    """Train from scratch (a few minutes on 2 cores), then export weights and measurements."""
    model = build(recipe)
    steps = recipe.steps if max_steps is None else min(recipe.steps, max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(recipe.data_seed)
    world = WORLDS[recipe.world]
    param_mean = param_std = None
    start = time.time()
    model.train()
    for step in range(steps):
        batch = generate(recipe.batch_size, world, seed=recipe.data_seed * 1_000_003 + step)
        x = batch.tensor()
        if recipe.augment:
            x = augment(x, generator)
        out = model(x)
        loss = sum(F.cross_entropy(out[name], torch.from_numpy(batch.attributes[name]))
                   for name in ATTRIBUTES)
        if model.regression is not None:
            params = torch.from_numpy(batch.params)
            if param_mean is None:
                param_mean, param_std = params.mean(0), params.std(0) + 1e-6
            loss = loss + F.mse_loss(out["regression"], (params - param_mean) / param_std)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            log(f"{recipe.name} step {step + 1}/{steps} loss {loss.item():.4f} "
                f"{(time.time() - start) / (step + 1):.3f}s/step")
    model.eval()
    measurements = measure(model, n=heldout)
    extra = {"name": recipe.name, "kind": recipe.kind, "description": recipe.description,
             "steps": steps, "train_seconds": round(time.time() - start, 1),
             "data_seed": recipe.data_seed, "world": recipe.world, "input": "RGB 32x32 in [-1, 1]"}
    model.save(export_dir, extra)
    (export_dir / "confusion.json").write_text(json.dumps(measurements, indent=2))
    log(f"{recipe.name}: held-out accuracy " + ", ".join(
        f"{k} {v['accuracy']:.4f}" for k, v in measurements["attributes"].items()))
    return steps


@torch.no_grad()
def predict(model: SynthFacesCNN, images: torch.Tensor, batch_size: int = 500) -> dict[str, np.ndarray]:
    """Class probabilities per attribute for [N, 3, 32, 32] images in [-1, 1]."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in model.heads}
    for i in range(0, len(images), batch_size):
        out = model(images[i:i + batch_size])
        for name in model.heads:
            chunks[name].append(out[name].softmax(-1).numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def measure(model: SynthFacesCNN, n: int = HELDOUT_N, seed: int = HELDOUT_SEED) -> dict:
    """Confusion matrices (rows: true class, columns: predicted) on held-out ground truth."""
    batch = generate(n, UNIFORM_WORLD, seed=seed)
    probs = predict(model, batch.tensor())
    result = {"heldout": {"n": n, "world": "uniform", "seed": seed}, "attributes": {}}
    for name, classes in ATTRIBUTES.items():
        truth, pred = batch.attributes[name], probs[name].argmax(1)
        matrix = np.zeros((len(classes), len(classes)), dtype=int)
        np.add.at(matrix, (truth, pred), 1)
        result["attributes"][name] = {"classes": list(classes), "confusion": matrix.tolist(),
                                      "accuracy": float((truth == pred).mean())}
    return result
