"""The labeler interface: per-attribute class probabilities plus a validity mask."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class LabelResult:
    probs: dict[str, np.ndarray]  # attribute -> [N, K] class probabilities
    valid: np.ndarray  # bool [N]: False when the labeler could not judge the image
    reasons: list[str | None] = field(default_factory=list)  # why an image is invalid

    def hard(self, attribute: str) -> np.ndarray:
        return self.probs[attribute].argmax(1)


class Labeler:
    """Subclasses set `name`, `source` (where the model comes from) and `attributes`."""

    name: str = "labeler"
    source: str = ""
    attributes: dict[str, list[str]] = {}
    differentiable: bool = False

    def label(self, images: torch.Tensor) -> LabelResult:
        """images: [N, 3, H, W] float in [0, 1]."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "attributes": self.attributes}
