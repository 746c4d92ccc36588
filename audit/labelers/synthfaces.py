"""The zoo's SynthFaces labelers (synthfaces-eval, synthfaces-pseudo): CNNs trained on exact
ground truth, with confusion matrices measured on 10,000 held-out images."""

from __future__ import annotations

import json

import numpy as np
import torch

from audit.labelers.base import Labeler, LabelResult
from audit.zoo import zoo_path
from audit.zoo.networks import SynthFacesCNN


class SynthFacesLabeler(Labeler):
    differentiable = True
    supplied = ("name",)  # its registry name (audit.registry.make_labeler), not a suite option

    def __init__(self, name: str = "synthfaces-eval", device: str = "cpu", batch_size: int = 500):
        self.name = name
        self.directory = zoo_path(name)
        self.model = SynthFacesCNN.load(self.directory).to(device)
        self.device, self.batch_size = device, batch_size
        self.attributes = self.model.config["attributes"]
        self.source = f"diffaudit zoo ({self.model.config.get('description', name)})"

    @classmethod
    def vocabulary(cls, options: dict) -> dict[str, list[str]]:
        """The attributes in the zoo labeler's config (the world's, while it is untrained)."""
        from audit.zoo.synthfaces import ATTRIBUTES

        config = zoo_path(options.get("name", "synthfaces-eval")) / "config.json"  # a subclass may fix its name
        attributes = json.loads(config.read_text())["attributes"] if config.is_file() else ATTRIBUTES
        return {a: list(c) for a, c in attributes.items()}

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable logits for images in [0, 1] (used by universal guidance)."""
        if images.shape[-1] != 32:
            images = torch.nn.functional.interpolate(images, size=(32, 32), mode="area")
        return self.model(images.to(self.device, torch.float32) * 2 - 1)

    @torch.no_grad()
    def label(self, images: torch.Tensor) -> LabelResult:
        chunks: dict[str, list[np.ndarray]] = {a: [] for a in self.attributes}
        for i in range(0, len(images), self.batch_size):
            out = self.logits(images[i:i + self.batch_size])
            for a in self.attributes:
                chunks[a].append(out[a].softmax(-1).cpu().numpy())
        probs = {a: np.concatenate(c) if c else np.zeros((0, len(self.attributes[a])))
                 for a, c in chunks.items()}
        return LabelResult(probs=probs, valid=np.ones(len(images), dtype=bool), reasons=[None] * len(images))

    def confusion(self) -> dict[str, np.ndarray]:
        """Confusion counts (rows true, columns predicted) measured on held-out ground truth."""
        data = json.loads((self.directory / "confusion.json").read_text())
        return {a: np.asarray(v["confusion"]) for a, v in data["attributes"].items()}
