"""CLIP score of a text-model cell: prompt-image alignment from a local CLIP.

torchmetrics' CLIPScore rejects local paths, so the score is 100 * max(cos, 0) computed with
the same local CLIP the clip_zeroshot labeler uses (the torchmetrics definition)."""

from __future__ import annotations

import numpy as np


def clip_scores(images, prompts: list[str], model_path: str) -> np.ndarray:
    from audit.labelers.clip_zeroshot import ClipZeroShotLabeler

    clip = ClipZeroShotLabeler(model_path=model_path, classes={})
    cos = np.asarray(clip.image_text_scores(images, prompts))
    return 100 * np.clip(np.diag(cos) if cos.ndim == 2 else cos, 0, None)


def cell_clip_score(ctx, cell) -> dict:
    if cell.prompt is None:
        return {"value": None, "reason": "unconditional model: no prompt to align with"}
    if not ctx.suite.clip_model:
        return {"value": None, "reason": "no clip_model configured in the suite"}
    samples = ctx.store.write_samples(cell.cell_id)
    scores = []
    for i in range(0, len(samples), 256):
        chunk = samples.iloc[i:i + 256]
        images = ctx.store.load_images(cell.cell_id, chunk["seed"].tolist())
        scores.append(clip_scores(images, chunk["prompt"].tolist(), ctx.suite.clip_model))
    values = np.concatenate(scores)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"value": float(values.mean()), "lo": float(values.mean() - half), "hi": float(values.mean() + half),
            "model": ctx.suite.clip_model}
