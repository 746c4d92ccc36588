"""FID[synthfaces]: the zoo's feature extractor for FID and KID on SynthFaces images."""

from __future__ import annotations

import json

import torch
from torch import nn

from audit.zoo import zoo_path

FEATURES = "synthfaces-features"


class SynthFacesFeatures(nn.Module):
    """FID[synthfaces]: the embedding of the zoo's `synthfaces-features` CNN, a network trained on
    SynthFaces to classify every attribute and regress every nuisance render parameter, so its
    features respond to everything the world varies. Input: images in [0, 1] (torchmetrics'
    normalize=True convention)."""

    def __init__(self, model: nn.Module | None = None):
        super().__init__()
        if model is None:
            from audit.zoo.networks import SynthFacesCNN

            model = SynthFacesCNN.load(zoo_path(FEATURES))
        self.model = model.eval()
        self.num_features = model.config["feature_dim"]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        if tuple(images.shape[-2:]) != (32, 32):  # its documented preprocessing: area resize to 32 px
            images = nn.functional.interpolate(images.float(), size=(32, 32), mode="area")
        return self.model.features(images * 2 - 1).double()


def feature_dim() -> int:
    """The extractor's feature count, read from its config (no weights loaded)."""
    return int(json.loads((zoo_path(FEATURES) / "config.json").read_text())["feature_dim"])
