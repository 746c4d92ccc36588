"""CLIP score of a text-model cell: prompt-image alignment from a local CLIP.

torchmetrics' CLIPScore rejects local paths, so the score is 100 * max(cos, 0) computed with
the same local CLIP the clip_zeroshot labeler uses (the torchmetrics definition). When the suite
names no clip_model, a model's source may name the CLIP that suits its world (the zoo's own)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=2)
def _clip(model_path: str):
    from audit.labelers.clip_zeroshot import ClipZeroShotLabeler

    return ClipZeroShotLabeler(model_path=model_path, classes={})


def clip_scores(images, prompts: list[str], model_path: str) -> np.ndarray:
    cos = np.asarray(_clip(str(model_path)).image_text_scores(images, prompts))
    return 100 * np.clip(np.diag(cos) if cos.ndim == 2 else cos, 0, None)
