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

    @classmethod
    def vocabulary(cls, options: dict) -> dict[str, list[str]] | None:
        """{attribute: [classes]} in the order `label` returns them, for a labeler built with
        `options` (its constructor's arguments, defaults filled in), WITHOUT loading any weights:
        a suite is checked against it when it loads, before any image is generated. Raise
        ValueError for options the constructor would reject. None: not known until built."""
        return {a: list(c) for a, c in cls.attributes.items()} or None

    def label(self, images: torch.Tensor) -> LabelResult:
        """images: [N, 3, H, W] float in [0, 1]."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "attributes": self.attributes}


# -- helpers shared by the backend labelers ----------------------------------------------------

def to_uint8_rgb(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] (or [N, 1, H, W]) float in [0, 1] -> [N, H, W, 3] uint8 RGB, rounded."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 3, H, W] floats in [0, 1], got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    array = images.detach().to("cpu", torch.float32).clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(array.permute(0, 2, 3, 1).numpy())


def age_group_names(bins: tuple[int, ...] | list[int]) -> list[str]:
    """Group names for ascending age edges: (20, 40, 60) -> ['0-19', '20-39', '40-59', '60+']."""
    edges = [int(b) for b in bins]
    if not edges or edges[0] <= 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"age_bins must be strictly increasing positive ages, got {list(bins)}")
    lows = [0, *edges]
    return [f"{lo}-{hi - 1}" for lo, hi in zip(lows, edges, strict=False)] + [f"{edges[-1]}+"]


def age_group_index(ages, bins: tuple[int, ...] | list[int]) -> np.ndarray:
    """Index of the age group (see age_group_names) of each age; an age equal to an edge opens the
    next group (20 -> '20-39')."""
    return np.searchsorted(np.asarray(bins, dtype=np.float64), np.asarray(ages, dtype=np.float64), side="right")


def one_hot(index: int, k: int) -> np.ndarray:
    row = np.zeros(k, dtype=np.float32)
    row[index] = 1.0
    return row


def upscale_min_side(image: np.ndarray, min_side: int | None) -> np.ndarray:
    """Bicubic upscaling of an HxWxC uint8 image so that its shorter side is at least `min_side`
    (face detectors have a minimum face size: dlib's HOG ~80 px, haar cascades 24-30 px)."""
    if not min_side or min(image.shape[:2]) >= min_side:
        return image
    from PIL import Image

    scale = min_side / min(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return np.ascontiguousarray(np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC)))
