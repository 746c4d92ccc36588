"""Prompt debiasing for text-conditioned models: each image's prompt gets an attribute phrase,
allocated so that the batch matches the target; or the "ethical intervention" phrasing
(Bansal et al. 2022), which appends a neutral clause instead of naming a class. Not applicable
to unconditional models."""

from __future__ import annotations

from typing import Literal

import numpy as np

from audit.methods.base import AllocatingMethod


class PromptDebiasing(AllocatingMethod):
    name = "prompt"
    title = "prompt debiasing"
    couples_batch = False
    text_only = True
    supplied = ("phrases", "target", "attribute_names")

    def __init__(self, phrases: list[str], target, variant: Literal["allocate", "ethical"] = "allocate",
                 attribute_names: str = ""):
        """phrases[k]: the text appended for class k of the (joint) attribute setting."""
        if variant not in ("allocate", "ethical"):
            raise ValueError(f"variant must be 'allocate' or 'ethical', got {variant!r}")
        self.phrases, self.target, self.variant = list(phrases), np.asarray(target, dtype=float), variant
        self.attribute_names = attribute_names
        if variant == "allocate" and len(self.phrases) != len(self.target):
            raise ValueError(f"need one phrase per class ({len(self.target)}), got {len(self.phrases)}")

    def not_applicable(self, adapter) -> str | None:
        if not adapter.conditional:
            return "prompt debiasing needs a text-conditioned model; this one is unconditional"
        return None

    def cell_choices(self, seeds: list[int]) -> list | None:
        """The ethical variant's prompts allocate nothing."""
        return None if self.variant == "ethical" else super().cell_choices(seeds)

    def prompts(self, prompts: list[str], seeds: list[int]) -> list[str]:
        if self.variant == "ethical":
            clause = f"if all individuals can be of any {self.attribute_names}"
            return [f"{p}, {clause}" for p in prompts]
        classes = self.allocated(seeds)
        return [f"{p} {self.phrases[c]}".strip() for p, c in zip(prompts, classes, strict=True)]

    def config(self) -> dict:
        return {"name": self.name, "variant": self.variant, "phrases": self.phrases,
                "target": self.target.tolist()}
