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


def cell_clip_model(suite, cell) -> tuple[str, str] | None:
    """(path to load, name to report) of the CLIP that scores the cell, or None."""
    if suite.clip_model:
        return suite.clip_model, suite.clip_model
    from audit.registry import model_source

    owner = model_source(cell.model.source)
    return owner[0].clip_model(owner[1]) if owner else None


def cell_clip_score(ctx, cell) -> dict:
    if cell.prompt is None:
        return {"value": None, "reason": "unconditional model: no prompt to align with"}
    clip = cell_clip_model(ctx.suite, cell)
    if clip is None:
        return {"value": None, "reason": "no clip_model configured in the suite"}
    samples = ctx.store.write_samples(cell.cell_id, cell.seeds)
    scores = []
    for i in range(0, len(samples), 256):
        chunk = samples.iloc[i:i + 256]
        images = ctx.store.load_images(cell.cell_id, chunk["seed"].tolist())
        scores.append(clip_scores(images, chunk["prompt"].tolist(), clip[0]))
    values = np.concatenate(scores)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"value": float(values.mean()), "lo": float(values.mean() - half), "hi": float(values.mean() + half),
            "model": clip[1]}
