"""CLIP score: torchmetrics' definition (100 * the mean cosine, clamped at 0 after the mean) with
the zoo's committed CLIP (whose text encoder reads 32 tokens), long prompts truncated and counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.metrics.clip import clip_score, clip_scores, truncated_prompts
from audit.zoo import zoo_path

CLIP = zoo_path("synthfaces-clip")
committed = pytest.mark.skipif(not (CLIP / "config.json").exists(), reason="synthfaces-clip not trained")


def faces(n: int) -> torch.Tensor:
    from audit.zoo.synthfaces import UNIFORM_WORLD, generate

    return generate(n, UNIFORM_WORLD, seed=11).tensor() / 2 + 0.5


def test_the_mean_is_clamped_not_each_image():
    scores = np.array([-10.0, 5.0, 1.0])
    assert clip_score(scores)["value"] == 0.0       # mean -1.33: an unrelated cell scores 0
    assert clip_score(np.array([-2.0, 8.0]))["value"] == pytest.approx(3.0)   # not (0 + 8) / 2
    interval = clip_score(np.array([1.0, 3.0, 5.0, 7.0]))
    half = 1.959963984540054 * np.std([1, 3, 5, 7], ddof=1) / 2
    assert (interval["lo"], interval["hi"]) == pytest.approx((4 - half, 4 + half))
    assert clip_score(np.array([-1.0, -3.0, 0.5]))["lo"] == 0.0


@committed
def test_cell_score_equals_torchmetrics_clip_score():
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPProcessor

    from audit.labelers.clip_zeroshot import _features, load_clip

    images = faces(6)
    prompts = ["a photo of a person with dark skin", "a photo of a person", "a face with eyeglasses",
               "a person with red hair", "a smiling person", "a photo of a person with light skin"]
    model, tokenizer, image_processor = load_clip(CLIP)

    class Features(torch.nn.Module):
        """The CLIP as torchmetrics 1.9 calls it: transformers 5 returns output objects where it
        expects the feature tensors."""

        def __init__(self):
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, *args, **kwargs):
            return _features(self.model.get_image_features(*args, **kwargs))

        def get_text_features(self, *args, **kwargs):
            return _features(self.model.get_text_features(*args, **kwargs))

    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    metric = CLIPScore(model_name_or_path=lambda: (Features(), processor))
    metric.update(list(images.mul(255).round().to(torch.uint8)), prompts)
    ours = clip_score(clip_scores(images, prompts, str(CLIP)))["value"]
    assert ours == pytest.approx(float(metric.compute()), abs=1e-3)


@committed
def test_long_prompts_are_truncated_and_counted():
    long = "a photo of a person " + "with a very long and detailed description " * 20
    from audit.labelers.clip_zeroshot import load_clip

    count, limit = truncated_prompts(["a photo of a person", long, long + "again"], str(CLIP))
    assert (count, limit) == (2, load_clip(CLIP)[0].config.text_config.max_position_embeddings)  # 77 for OpenAI's
    images = faces(2)
    # only the first `limit` tokens count (the end-of-text token kept): what follows changes nothing
    scores = clip_scores(images, [long + " and dark skin", long + " and light skin"], str(CLIP))
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(clip_scores(images, [long, long], str(CLIP))))
