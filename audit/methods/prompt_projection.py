"""Prompt-embedding projection, after FairImagen (Fu et al., "FairImagen: Post-Processing for Bias
Mitigation in Text-to-Image Models", NeurIPS 2025, arXiv 2510.21363).

The text encoder's output for the prompt is projected, token by token, off the directions along
which prompts naming each group differ, so that what the UNet reads no longer says (linearly)
which group to draw; optional noise in those directions then spreads the images over them. As in
fair PCA (Kleindessner et al. 2023), the removed subspace is spanned by the group means' deviations
from their common mean: here at every token position of the prompt with each class's phrase
appended ("a photo of a person" + " with dark skin" ...), since a causal text encoder carries the
phrase into every later token. The fewest directions holding `energy` of those deviations' squared
norm are removed (all of them at 1.0). The noise is drawn per image from the image's seed, along
each removed direction with the spread the group prompts have along it, so an image does not
depend on its batch.

It changes no image toward a target: it removes what the prompt says about the group and leaves
the rest to the model, so a skewed target (0.1/0.9) is outside its reach.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from audit.methods.base import BatchContext, Method, cross_attention_only

Energy = Annotated[float, Field(gt=0, le=1)]
Noise = Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]


class PromptProjection(Method):
    name = "prompt_projection"
    title = "prompt-embedding projection"
    text_only = True
    couples_batch = False  # a projection fixed by the prompt, and noise drawn from each image's seed
    supplied = ("phrases",)

    def __init__(self, phrases: list[str], energy: Energy = 0.95, noise: Noise = 0.0):
        """phrases[k]: the text naming class k of the (joint) attribute setting."""
        if len(set(phrases)) < 2:
            raise ValueError(f"need at least two different group phrases to find what separates them, got {phrases}")
        if not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {energy}")
        if not 0 <= noise <= 10:
            raise ValueError(f"noise must be from 0 to 10 (in units of the groups' spread), got {noise}")
        self.phrases, self.energy, self.noise = list(phrases), float(energy), float(noise)
        self._projections: dict[tuple[str, ...], dict] = {}

    @classmethod
    def images_setting(cls, values: dict, setting) -> object:
        """The classes, whose phrases the projection removes; not the target it cannot aim at, so
        skin tone uniform and 0.1/0.9 share their images."""
        return {"attributes": setting.attributes, "classes": setting.class_lists()}

    def not_applicable(self, adapter) -> str | None:
        return self.not_applicable_to(adapter.conditional) or cross_attention_only(self, adapter)

    def projection(self, adapter, prompt: str) -> dict:
        """{"basis": [r, D] orthonormal rows removed, "spread": [r] the group prompts' spread along
        each}, for `prompt` (computed once per prompt)."""
        if prompt not in self._projections:
            groups = [f"{prompt} {phrase}".strip() for phrase in self.phrases]
            embeddings = adapter.encode_prompts(groups).double()  # [K, T, D]
            deviations = (embeddings - embeddings.mean(0)).flatten(0, 1)  # [K*T, D]
            basis = removed_directions(deviations, self.energy)
            spread = (deviations @ basis.T).pow(2).mean(0).sqrt() * np.sqrt(len(groups) / max(1, len(groups) - 1))
            self._projections[prompt] = {"basis": basis, "spread": spread,
                                         "captured": float((deviations @ basis.T).pow(2).sum()
                                                           / deviations.pow(2).sum().clamp(min=1e-30))}
        return self._projections[prompt]

    def project(self, context: torch.Tensor, prompts: list[str], seeds: list[int], adapter) -> torch.Tensor:
        """context [N, T, D] of `prompts` with the group directions removed and the noise added."""
        out = context.double().clone()
        for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            fitted = self.projection(adapter, prompt)
            basis = fitted["basis"].to(out.device)
            out[i] -= (out[i] @ basis.T) @ basis
            if self.noise and len(basis):
                z = torch.from_numpy(np.random.default_rng([int(seed), 40]).standard_normal(len(basis)))
                out[i] += (self.noise * z.to(out.device) * fitted["spread"].to(out.device)) @ basis
        return out.to(context.dtype)

    def start_batch(self, batch: BatchContext) -> None:
        """Replace the prompts' rows of the batch's text context (the last N: under classifier-free
        guidance the negative prompt's come first) by their projection; the UNet reads this very
        tensor at every step."""
        n = len(batch.seeds)
        with torch.no_grad():
            batch.context[-n:] = self.project(batch.context[-n:], list(batch.prompts), batch.seeds, batch.adapter)
        batch.state["removed_directions"] = sorted({len(self._projections[p]["basis"]) for p in batch.prompts})
        batch.state["group_variance_removed"] = sorted({round(self._projections[p]["captured"], 4)
                                                        for p in batch.prompts})

    def end_batch(self, batch: BatchContext) -> dict:
        return dict(batch.state)

    def config(self) -> dict:
        return {"name": self.name, "phrases": self.phrases, "energy": self.energy, "noise": self.noise}


def removed_directions(deviations: torch.Tensor, energy: float) -> torch.Tensor:
    """The fewest leading right singular vectors of `deviations` [M, D] holding `energy` of its
    squared norm ([r, D]; none when the groups do not differ)."""
    _, s, vh = torch.linalg.svd(deviations, full_matrices=False)
    power = s.pow(2)
    if float(power.sum()) <= 1e-20:
        return vh[:0]
    share = power.cumsum(0) / power.sum()
    r = int((share < energy - 1e-9).sum()) + 1
    r = min(r, int((s > s[0] * 1e-6).sum()))
    return vh[:r]
