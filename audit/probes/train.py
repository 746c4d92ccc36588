"""Train h-space probes: sample without guidance, record h at every step, pseudo-label the
final images with a labeler, fit one linear head per step (all steps at once, full batch)."""

from __future__ import annotations

import numpy as np
import torch

from audit.probes.probe import Probe


def collect(adapter, seeds: list[int], steps: int, batch_size: int, prompts: list[str] | None = None,
            guidance_scale: float = 1.0, progress=None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(H [steps, N, D], images [N, 3, H, W] in [0, 1], timesteps) from unguided sampling."""
    hs, images = [], []
    for i in range(0, len(seeds), batch_size):
        batch_prompts = None if prompts is None else prompts[i:i + batch_size]
        out = adapter.generate(seeds[i:i + batch_size], prompts=batch_prompts, steps=steps,
                               guidance_scale=guidance_scale, record_h=True)
        hs.append(torch.stack(out.h))
        images.append(out.images)
        if progress is not None:
            progress(len(out.images))
    return torch.cat(hs, dim=1), torch.cat(images), adapter.timesteps(steps)


def _split_and_standardise(H: torch.Tensor, val_fraction: float, seed: int):
    """(train indices, validation indices, per-step mean [S, D], per-step std [S, D]) of H [S, N, D]."""
    n = H.shape[1]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n * val_fraction))) if n > 4 else 0
    val, train = order[:n_val], order[n_val:]
    return train, val, H[:, train].mean(1), H[:, train].std(1).clamp(min=1e-4)


def fit_heads(H: torch.Tensor, labels: torch.Tensor, k: int, val_fraction: float = 0.2,
              epochs: int = 300, lr: float = 1e-2, weight_decays=(1e-3, 1e-2, 1e-1, 1.0), seed: int = 0):
    """Fit per-step multinomial logistic regressions on standardised h.

    The L2 strength is chosen by validation log-loss (calibration matters: guidance averages
    the probe's probabilities over the batch, so an overconfident probe misjudges the batch).
    Returns (weight [S, K, D], bias [S, K], mean [S, D], std [S, D], val_accuracy [S])."""
    steps = H.shape[0]
    train, val, mean, std = _split_and_standardise(H, val_fraction, seed)
    n_val = len(val)
    Z = (H - mean[:, None]) / std[:, None]
    best = None
    for weight_decay in weight_decays if n_val else weight_decays[-1:]:
        weight, bias = _fit(Z[:, train], labels[train], k, epochs, lr, weight_decay)
        if not n_val:
            best = (weight, bias, torch.full((steps,), float("nan")))
            break
        with torch.no_grad():
            logits = torch.einsum("snd,skd->snk", Z[:, val], weight) + bias[:, None]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, k), labels[val].repeat(steps))
            accuracy = (logits.argmax(-1) == labels[val]).float().mean(1)
        if best is None or nll < best[3]:
            best = (weight, bias, accuracy, nll)
    return best[0], best[1], mean, std, best[2]


def fit_mean_heads(H: torch.Tensor, labels: torch.Tensor, k: int, val_fraction: float = 0.2,
                   epochs: int = 300, lr: float = 5e-2, seed: int = 0):
    """Per-step heads constrained to the class-mean directions of h.

    Head c scores a * (h - m) . (mu_c - m) + b_c, with m the mean h and mu_c the class mean (raw
    units): only a and b are fitted, by log-loss. Its gradient w.r.t. h is a combination of
    class-mean differences, the directions the decoder actually reads. An unconstrained
    logistic head separates the classes along whatever low-variance directions discriminate
    best; on the zoo DDPM, moving h along its gradient changed the images 2-3x less than moving
    it the same distance along the class-mean difference, so guidance fooled the probe instead
    of changing the attribute. Same return values as fit_heads (weights in standardised units)."""
    steps = H.shape[0]
    train, val, mean, std = _split_and_standardise(H, val_fraction, seed)
    n_val = len(val)
    centred = H - mean[:, None]
    onehot = torch.nn.functional.one_hot(labels[train], k).float()
    counts = onehot.sum(0).clamp(min=1)
    class_means = torch.einsum("snd,nk->skd", centred[:, train], onehot) / counts[None, :, None]
    scores = torch.einsum("snd,skd->snk", centred, class_means)  # [S, N, K]
    scale = scores[:, train].std(dim=(1, 2)).clamp(min=1e-6)  # start a at unit-variance scores
    log_a = torch.zeros(steps, requires_grad=True)
    bias = torch.zeros(steps, k, requires_grad=True)
    optimizer = torch.optim.Adam([log_a, bias], lr=lr)
    targets = labels[train].repeat(steps)
    for _ in range(epochs):
        logits = scores[:, train] / scale[:, None, None] * log_a.exp()[:, None, None] + bias[:, None]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, k), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    a = (log_a.exp() / scale).detach()
    weight = a[:, None, None] * class_means * std[:, None]  # z . weight == a * (h - m) . mu_c
    bias = bias.detach()
    accuracy = torch.full((steps,), float("nan"))
    if n_val:
        with torch.no_grad():
            logits = scores[:, val] * a[:, None, None] + bias[:, None]
            accuracy = (logits.argmax(-1) == labels[val]).float().mean(1)
    return weight, bias, mean, std, accuracy


def _fit(Z: torch.Tensor, y: torch.Tensor, k: int, epochs: int, lr: float, weight_decay: float):
    steps, n, dim = Z.shape
    weight = torch.zeros(steps, k, dim, requires_grad=True)
    bias = torch.zeros(steps, k, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    targets = y.repeat(steps)
    for _ in range(epochs):
        logits = torch.einsum("snd,skd->snk", Z, weight) + bias[:, None]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, k), targets)
        loss = loss + weight_decay * weight.pow(2).sum(dim=(1, 2)).mean() / n
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return weight.detach(), bias.detach()


def train_probes(adapter, labeler, attributes: list[str], n: int = 1000, steps: int = 50,
                 batch_size: int = 64, seed_offset: int = 10_000_000, prompts: list[str] | None = None,
                 guidance_scale: float = 1.0, tau: float = 1.0, head: str = "class-mean",
                 progress=None) -> dict[str, Probe]:
    """One probe per attribute, trained on the same sampled h. Probe seeds start at
    `seed_offset` so they never overlap the seeds of evaluation cells. tau defaults to 1: these
    heads are calibrated by validation, and the paper's tau=8 (for its large-logit SD heads)
    flattens their probabilities so much that an imbalanced batch looks balanced."""
    for a in attributes:
        if a not in labeler.attributes:
            raise ValueError(f"labeler {labeler.name} has no attribute {a!r}; it labels "
                             f"{', '.join(labeler.attributes)}")
    seeds = list(range(seed_offset, seed_offset + n))
    H, images, timesteps = collect(adapter, seeds, steps, batch_size, prompts, guidance_scale, progress)
    result = labeler.label(images)
    probes = {}
    for a in attributes:
        classes = list(labeler.attributes[a])
        keep = torch.from_numpy(result.valid)
        y = torch.from_numpy(result.hard(a)).long()[keep]
        fit = fit_mean_heads if head == "class-mean" else fit_heads
        weight, bias, mean, std, accuracy = fit(H[:, keep], y, len(classes))
        counts = np.bincount(y.numpy(), minlength=len(classes))
        meta = {"model_id": adapter.model_id, "revision": adapter.revision, "labeler": labeler.name,
                "n": int(keep.sum()), "steps": steps, "guidance_scale": guidance_scale,
                "seed_offset": seed_offset, "head": head, "label_counts": counts.tolist(),
                "val_accuracy": [round(float(v), 4) for v in accuracy]}
        probe = Probe(a, classes, timesteps, H.shape[-1], tau, meta)
        with torch.no_grad():
            probe.weight.copy_(weight)
            probe.bias.copy_(bias)
            probe.mean.copy_(mean)
            probe.std.copy_(std)
        probe.measure_confusion(H[:, keep], y)  # all samples: a head has only K+1 fitted numbers per step
        probes[a] = probe.eval().requires_grad_(False)
    return probes
