"""The zoo's SynthFaces labelers: CNNs trained on exact ground truth (synthfaces-eval,
synthfaces-pseudo) and the zoo's CLIP as a zero-shot labeler (synthfaces-clip), each with
confusion matrices measured on held-out ground-truth images at export.

The CLIP is the third independent judge beside the two CNNs (a different model family trained
with a different objective); its confusion feeds the error-aware estimates like theirs do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from audit.labelers.base import Labeler, LabelResult
from audit.labelers.clip_zeroshot import ClipZeroShotLabeler
from audit.zoo import zoo_path
from audit.zoo.networks import SynthFacesCNN
from audit.zoo.synthfaces import ATTRIBUTE_PHRASES, ATTRIBUTES, SUBJECTS


class SynthFacesLabeler(Labeler):
    differentiable = True
    supplied = ("name",)  # fixed by its registration (which network), not a suite option

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


# Every caption subject the CLIP was trained on, each followed by the class phrase: the class
# embedding is the mean over subjects and phrasings (prompt ensembling).
TEMPLATES = [f"{subject} {{}}" for subject in SUBJECTS]


def zero_shot_classes() -> dict[str, dict[str, list[str]]]:
    """{attribute: {class: [phrases]}} in the world's class order, e.g. dark -> 'with dark skin'."""
    return {attribute: {cls: list(ATTRIBUTE_PHRASES[attribute][cls]) for cls in classes}
            for attribute, classes in ATTRIBUTES.items()}


class SynthFacesClipLabeler(ClipZeroShotLabeler):
    supplied = ("name",)  # fixed by its registration (which network), not a suite option

    def __init__(self, name: str = "synthfaces-clip", device: str = "cpu", batch_size: int = 500,
                 model_path: str | os.PathLike | None = None):
        directory = Path(zoo_path(name) if model_path is None else model_path)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"zoo CLIP {name!r} has no weights in {directory}: "
                                    f"run `diffaudit zoo train {name}`")
        super().__init__(directory, classes=zero_shot_classes(), templates=TEMPLATES, device=device,
                         batch_size=batch_size)
        self.name = name
        self.directory = directory
        self.source = f"diffaudit zoo CLIP {name} (zero-shot); {self.source}"

    @classmethod
    def vocabulary(cls, options: dict) -> dict[str, list[str]]:
        return {a: list(c) for a, c in zero_shot_classes().items()}

    def confusion(self) -> dict[str, np.ndarray]:
        """Confusion counts (rows true, columns predicted) measured on held-out ground truth."""
        data = json.loads((self.directory / "confusion.json").read_text())
        return {a: np.asarray(v["confusion"]) for a, v in data["attributes"].items()}
