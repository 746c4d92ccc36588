"""Unsupervised h-space balancing, after SelfDebias (Vardhana, Lolla and Biswas, "Fully
Unsupervised Self-debiasing of Text-to-Image Diffusion Models", WACV 2026, arXiv 2512.03749).

No labeler and no labelled probe: the model is sampled without guidance, the h of those samples
at the last step is clustered into k groups (k-means on its leading principal components), and
batches are guided toward a uniform (or given) distribution over the clusters with the batch loss
distribution guidance uses (KL, as the paper). The paper clusters an image encoder's embeddings
of the final images; this one clusters h itself, so it needs nothing but the UNet. Where the
clusters are read during sampling, each step gets its own class-mean head fitted to the same
cluster labels (audit.probes.train.fit_mean_heads), so the push follows the directions that
separate the clusters in h at that step.

What gets balanced is whatever h varies most along, which need not be the audited attribute:
so the suite's evaluation labelers label the clustered samples and the manifest records each
cluster's attribute shares (`config()["clusters"]`), and an auditor sees what was balanced.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from audit.methods.base import BatchContext, Method
from audit.methods.guidance import (
    DEFAULT_STOP,
    Fraction,
    GradTau,
    Loss,
    ProbeGuidance,
    Scale,
    batch_distribution_loss,
    check_window,
    proportions,
)

Clusters = Annotated[int, Field(ge=2, le=64)]
FeatureSamples = Annotated[int, Field(ge=16, le=100_000)]
PCA_COMPONENTS = 32  # k-means on h's leading principal components: raw h is 10^3-10^4 dimensions of mostly noise


class SelfDebias(ProbeGuidance, Method):
    name = "self_debias"
    title = "unsupervised h-space balancing"
    supplied = ("target", "unguided")
    needs_probe = False  # it trains its own cluster heads, on no labels
    calibrates_scale = False  # the calibration judges images with the probe labeler, which this method has not
    suite_defaults = {}  # so a suite that names no scale gets the constructor's, not `auto`

    def __init__(self, target, unguided, k: Clusters | None = None, shares: list[float] | None = None,
                 n: FeatureSamples = 512, scale: Scale = 4.0, loss: Loss = "kl", start: Fraction = 0.0,
                 stop: Fraction = DEFAULT_STOP, normalize: bool = True, grad_tau: GradTau = 8.0, seed: int = 0):
        """target: the setting's target; only its length is used, as the default k (the clusters
        have no names, so a target over named classes cannot be aimed at). unguided: the model to
        sample without guidance (audit.run.build.UnguidedSamples)."""
        self.k = int(k) if k is not None else len(target)
        if self.k < 2:
            raise ValueError(f"k must be at least 2 clusters, got {self.k}")
        self.shares = proportions(shares if shares is not None else np.full(self.k, 1 / self.k), self.k, "shares",
                                  f"one per cluster, k={self.k}")
        if n < 4 * self.k:
            raise ValueError(f"n must be at least 4 samples per cluster ({4 * self.k} for k={self.k}), got {n}")
        if not 0 <= start < stop <= 1:
            raise ValueError(f"need 0 <= start < stop <= 1, got start={start}, stop={stop}")
        self.unguided, self.n, self.seed = unguided, int(n), int(seed)
        self.scale, self.loss, self.path = float(scale), loss, "h"
        self.start, self.stop, self.normalize, self.grad_tau = start, stop, normalize, float(grad_tau)

    @classmethod
    def images_setting(cls, values: dict, setting) -> object:
        """Only the number of classes reaches the images, as the default k: settings with as many
        classes (skin tone uniform and 0.1/0.9) balance the same clusters, so share their images."""
        return None if values.get("k") is not None else len(setting.joint_classes())

    @classmethod
    def check_params(cls, values: dict) -> None:
        check_window(values)
        k, shares = values.get("k"), values.get("shares")
        if shares is not None:
            proportions(shares, k or len(shares), "shares", f"one per cluster, k={k}" if k else "one per cluster")
        if k is not None and values.get("n", 512) < 4 * k:
            raise ValueError(f"n must be at least 4 samples per cluster ({4 * k} for k={k}), got {values['n']}")

    @cached_property
    def clusters(self) -> dict:
        """{"probe": the cluster heads, "description": sizes and evaluation-labeler shares per
        cluster}, fitted once per model, prompt and parameters and kept in the unguided cache."""
        from audit.probes.probe import Probe

        described_by = "-".join(sorted(labeler.name for labeler in self.unguided.labelers)) or "none"
        folder = self.unguided.cache / f"self_debias-k{self.k}-n{self.n}-seed{self.seed}-{described_by}"
        described = folder / "clusters.json"
        if Probe.saved(folder) and described.exists():
            return {"probe": Probe.load(folder).to(self.unguided.adapter.device),
                    "description": json.loads(described.read_text())}
        H, images, timesteps = self.unguided.collect(self.n)
        labels = cluster(H[-1], self.k, self.seed)
        probe = cluster_heads(H, labels, self.k, timesteps, {"model_id": self.unguided.adapter.model_id,
                                                              "revision": self.unguided.adapter.revision,
                                                              "n": self.n, "seed": self.seed})
        description = describe(labels, self.k, images, self.unguided.labelers)
        probe.save(folder)
        described.write_text(json.dumps(description))
        return {"probe": probe.to(self.unguided.adapter.device), "description": description}

    @property
    def probes(self) -> list:
        return [self.clusters["probe"]]

    def start_cell(self, seeds: list[int]) -> None:
        _ = self.clusters  # fit before the first batch (the manifest usually has already)

    def cell_choices(self, seeds: list[int]) -> list | None:
        return None  # images depend on their batch (couples_batch), not on a per-seed choice

    def probe_loss(self, h: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        target = torch.tensor(self.shares, dtype=torch.float32, device=h.device)
        loss, p_hat = batch_distribution_loss(self.probes, h, batch.t, target, self.loss, self.grad_tau)
        batch.state.setdefault("loss", []).append(round(float(loss.detach()), 6))
        batch.state["p_hat_clusters"] = [round(float(v), 4) for v in p_hat.detach()]
        return loss

    def config(self) -> dict:
        return {"name": self.name, "k": self.k, "shares": self.shares.tolist(), "n": self.n, "seed": self.seed,
                "scale": self.scale, "loss": self.loss, "start": self.start, "stop": self.stop,
                "normalize": self.normalize, "grad_tau": self.grad_tau, "clusters": self.clusters["description"]}


def cluster(h: torch.Tensor, k: int, seed: int) -> np.ndarray:
    """k-means labels of the rows of h [N, D], on their standardised leading principal components
    (the best of 10 k-means++ starts by inertia), renumbered largest cluster first."""
    from scipy.cluster.vq import kmeans2

    z = h.flatten(1).double()
    z = (z - z.mean(0)) / z.std(0).clamp(min=1e-6)
    q = min(PCA_COMPONENTS, *z.shape)
    u, s, _ = torch.linalg.svd(z, full_matrices=False)
    points = (u[:, :q] * s[:q]).numpy()
    best = None
    rng = np.random.default_rng(seed)
    for _ in range(10):
        centroids, labels = kmeans2(points, k, minit="++", seed=rng)
        inertia = ((points - centroids[labels]) ** 2).sum()
        if len(np.unique(labels)) == k and (best is None or inertia < best[0]):
            best = (inertia, labels)
    if best is None:
        raise ValueError(f"k-means found fewer than k={k} non-empty clusters in {len(points)} unguided samples: "
                         "lower k or raise n")
    order = np.argsort(-np.bincount(best[1], minlength=k), kind="stable")
    return np.argsort(order)[best[1]]


def cluster_heads(H: torch.Tensor, labels: np.ndarray, k: int, timesteps: list[int], meta: dict):
    """A Probe over the k clusters: a class-mean head per step, fitted to the cluster labels."""
    from audit.probes.probe import Probe
    from audit.probes.train import fit_mean_heads

    y = torch.from_numpy(labels).long()
    weight, bias, mean, std, accuracy = fit_mean_heads(H, y, k)
    meta = {**meta, "head": "class-mean", "labeler": None, "label_counts": np.bincount(labels, minlength=k).tolist(),
            "val_accuracy": [round(float(v), 4) for v in accuracy]}
    probe = Probe("cluster", [f"cluster {c}" for c in range(k)], timesteps, H.shape[-1], 1.0, meta)
    with torch.no_grad():
        probe.weight.copy_(weight)
        probe.bias.copy_(bias)
        probe.mean.copy_(mean)
        probe.std.copy_(std)
    probe.measure_confusion(H, y)
    return probe.eval().requires_grad_(False)


def describe(labels: np.ndarray, k: int, images: torch.Tensor, labelers: list) -> dict:
    """Each cluster's size and, per evaluation labeler and attribute, its class shares: what the
    clusters turned out to separate (and so what balancing them balances)."""
    sizes = np.bincount(labels, minlength=k)
    out: dict = {"sizes": sizes.tolist(), "labelers": {}}
    for labeler in labelers:
        result = labeler.label(images)
        shares = {}
        for attribute, classes in labeler.attributes.items():
            hard = result.hard(attribute)
            table = {}
            for c in range(k):
                keep = (labels == c) & result.valid
                counts = np.bincount(hard[keep], minlength=len(classes))
                table[f"cluster {c}"] = dict(zip(classes, np.round(counts / max(1, counts.sum()), 3).tolist(),
                                                 strict=True))
            shares[attribute] = table
        out["labelers"][labeler.name] = shares
    return out
