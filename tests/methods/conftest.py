"""Helpers of the method tests: a real (trivial) labeler and the unguided-sample handle a runner supplies."""

from __future__ import annotations

import numpy as np
import pytest

from audit.labelers.base import Labeler, LabelResult
from audit.run.build import UnguidedSamples


class BrightnessLabeler(Labeler):
    """Labels an image dark or bright by its mean pixel: something a tiny random model does vary."""

    name = "brightness-test"
    source = "mean pixel value (test)"
    attributes = {"brightness": ["dark", "bright"]}

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    def label(self, images):
        x = images.double().reshape(len(images), -1).numpy()
        bright = x.mean(1) > self.threshold
        return LabelResult(probs={"brightness": np.stack([~bright, bright], 1).astype(np.float32)},
                           valid=np.ones(len(x), dtype=bool))


@pytest.fixture
def unguided(tiny_adapter, tmp_path):
    """The tiny unconditional model sampled unguided at 5 steps, cached under tmp_path."""
    images = tiny_adapter.generate(list(range(UnguidedSamples.SEED_OFFSET, UnguidedSamples.SEED_OFFSET + 8)),
                                   steps=5).images
    threshold = float(images.mean())
    return UnguidedSamples(adapter=tiny_adapter, prompt=None, steps=5, guidance_scale=1.0, batch_size=32,
                           cache=tmp_path / "unguided", labelers=[BrightnessLabeler(threshold)])
