"""FID with torchmetrics' FrechetInceptionDistance and a named, pluggable feature extractor.

The extractor is part of the metric's name (FID[synthfaces], ...): FIDs computed with
different extractors are different metrics and are never compared.
"""

from __future__ import annotations

import torch
from torch import nn


class SynthFacesFeatures(nn.Module):
    """FID[synthfaces]: the 64-d embedding of the zoo's `synthfaces-features` CNN, a network
    trained on SynthFaces to classify every attribute and regress every nuisance render
    parameter, so its features respond to everything the world varies. Input: images in
    [0, 1] (torchmetrics' normalize=True convention)."""

    def __init__(self, model: nn.Module | None = None):
        super().__init__()
        if model is None:
            from audit.zoo import zoo_path
            from audit.zoo.networks import SynthFacesCNN

            model = SynthFacesCNN.load(zoo_path("synthfaces-features"))
        self.model = model.eval()
        self.num_features = model.config["feature_dim"]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        if images.shape[-1] != 32:
            images = nn.functional.interpolate(images, size=(32, 32), mode="area")
        return self.model.features(images * 2 - 1).double()


EXTRACTORS = {"synthfaces": SynthFacesFeatures}


def make_fid(extractor: str = "synthfaces"):
    """A torchmetrics FrechetInceptionDistance over the named extractor (inputs in [0, 1])."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown FID extractor {extractor!r}; available: {', '.join(EXTRACTORS)}")
    return FrechetInceptionDistance(feature=EXTRACTORS[extractor](), normalize=True)


def fid_between(a: torch.Tensor, b: torch.Tensor, extractor: str = "synthfaces", batch: int = 500) -> float:
    """FID between two image sets ([N, 3, H, W] in [0, 1]); `a` is the reference."""
    metric = make_fid(extractor)
    for i in range(0, len(a), batch):
        metric.update(a[i:i + batch], real=True)
    for i in range(0, len(b), batch):
        metric.update(b[i:i + batch], real=False)
    return float(metric.compute())
