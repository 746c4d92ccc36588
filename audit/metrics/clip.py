"""CLIP score of a text-model cell: prompt-image alignment from a local CLIP.

torchmetrics' CLIPScore rejects local paths, so the score is computed here with the same local CLIP
the clip_zeroshot labeler uses, by torchmetrics' definition: 100 * the mean over images of the
cosine between image i and prompt i, clamped at 0 (torchmetrics clamps the mean, not each image;
clamping each would lift a cell whose images are unrelated to their prompts above 0). Prompts
longer than the CLIP's text encoder reads (77 tokens for OpenAI's CLIP) are truncated, and the
cell says how many were. When the suite names no clip_model, a model's source may name the CLIP
that suits its world (the zoo's own)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import stats


@lru_cache(maxsize=2)
def _clip(model_path: str):
    from audit.labelers.clip_zeroshot import ClipZeroShotLabeler

    return ClipZeroShotLabeler(model_path=model_path, classes={})


def clip_scores(images, prompts: list[str], model_path: str) -> np.ndarray:
    """100 * cosine of each image with its prompt, not clamped (a paired difference or a mean of
    these stays unbiased; clip_score clamps the mean)."""
    cos = np.asarray(_clip(str(model_path)).image_text_scores(images, prompts))
    return 100 * (np.diag(cos) if cos.ndim == 2 else cos)


def truncated_prompts(prompts: list[str], model_path: str) -> tuple[int, int]:
    """(how many prompts are longer than the CLIP's text encoder reads, that limit: 77 for CLIP)."""
    clip = _clip(str(model_path))
    return clip.truncated(list(prompts)), clip.max_tokens


def clip_score(scores: np.ndarray) -> dict:
    """value = max(mean, 0) of per-image scores (torchmetrics' clamp), with a normal 95% interval
    of the mean whose ends are clamped the same way."""
    scores = np.asarray(scores, dtype=float)
    mean = float(scores.mean())
    half = stats.norm.ppf(0.975) * scores.std(ddof=1) / np.sqrt(len(scores)) if len(scores) > 1 else float("nan")
    return {"value": max(mean, 0.0), "lo": max(mean - half, 0.0), "hi": max(mean + half, 0.0)}
