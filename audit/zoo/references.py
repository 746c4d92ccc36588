"""`fid.reference: synthfaces:WORLD`: ground-truth images of a SynthFaces world, drawn on demand.
Ground truth is exact, so FID can also be taken against the target-matched world: what a perfect
debiasing method would produce (FID to it charges guidance for quality, not for the shift)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from audit.plugins import ReferenceImages
from audit.zoo.synthfaces import ATTRIBUTES, WORLDS, World, generate

if TYPE_CHECKING:
    import torch

REFERENCE_SEED = 31_337  # ground-truth reference sets never share seeds with training data


class SynthFacesWorlds(ReferenceImages):
    """`synthfaces:biased` and `synthfaces:uniform`: ground-truth images of a SynthFaces world."""

    def names(self) -> list[str]:
        return list(WORLDS)

    def _world(self, name: str) -> World:
        if name not in WORLDS:
            raise ValueError(f"unknown SynthFaces world {name!r}; allowed: {', '.join(WORLDS)}")
        return WORLDS[name]

    def images(self, name: str, n: int) -> torch.Tensor:
        return generate(n, self._world(name), seed=REFERENCE_SEED).tensor() / 2 + 0.5

    def can_match(self, attributes: list[str]) -> bool:
        return all(a in ATTRIBUTES for a in attributes)

    def target_images(self, name: str, attributes: list[str], target: list[float], n: int) -> torch.Tensor:
        """The world with the guided attributes' joint distribution replaced by the target (counts
        rounded to n by largest remainders; correlations involving them dropped)."""
        base = self._world(name)
        uniform = {a: tuple([1 / len(ATTRIBUTES[a])] * len(ATTRIBUTES[a])) for a in attributes}
        marginals = {**base.marginals, **uniform}
        correlations = tuple(c for c in base.correlations
                             if c.attribute not in attributes and c.given not in attributes)
        k = len(target)
        pool = generate(2 * n * k, World(marginals, correlations), seed=REFERENCE_SEED + 1)
        joint = np.zeros(len(pool), dtype=int)
        for a in attributes:
            joint = joint * len(ATTRIBUTES[a]) + np.asarray(pool.attributes[a])
        counts = np.floor(np.asarray(target) * n).astype(int)
        for c in np.argsort(-(np.asarray(target) * n - counts))[: n - counts.sum()]:
            counts[c] += 1
        chosen = np.concatenate([np.flatnonzero(joint == c)[:counts[c]] for c in range(k)])
        return pool.tensor()[np.sort(chosen)] / 2 + 0.5
