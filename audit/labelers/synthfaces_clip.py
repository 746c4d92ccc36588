"""The zoo's CLIP as a zero-shot labeler (synthfaces-clip): ClipZeroShotLabeler on the bundled
SynthFaces CLIP, with class prompts for the five world attributes.

It is the third independent judge beside the two CNN labelers (a different model family trained
with a different objective), and its confusion matrices, measured on 10,000 held-out
ground-truth images at export, feed the error-aware estimates like theirs do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from audit.labelers.clip_zeroshot import ClipZeroShotLabeler
from audit.zoo.synthfaces import ATTRIBUTE_PHRASES, ATTRIBUTES, SUBJECTS

# Every caption subject the CLIP was trained on, each followed by the class phrase: the class
# embedding is the mean over subjects and phrasings (prompt ensembling).
TEMPLATES = [f"{subject} {{}}" for subject in SUBJECTS]


def zero_shot_classes() -> dict[str, dict[str, list[str]]]:
    """{attribute: {class: [phrases]}} in the world's class order, e.g. dark -> 'with dark skin'."""
    return {attribute: {cls: list(ATTRIBUTE_PHRASES[attribute][cls]) for cls in classes}
            for attribute, classes in ATTRIBUTES.items()}


class SynthFacesClipLabeler(ClipZeroShotLabeler):
    supplied = ("name",)  # its registry name (audit.registry.make_labeler), not a suite option

    def __init__(self, name: str = "synthfaces-clip", device: str = "cpu", batch_size: int = 500,
                 model_path: str | os.PathLike | None = None):
        from audit.zoo import zoo_path

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
