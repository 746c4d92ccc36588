"""Labels of a cell's images, cached per image and labeler configuration (the label key)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.run.context import IMAGE_CHECKS, RunContext
from audit.run.generate import unusable_images
from audit.spec import Cell
from audit.stages import reached


def label_cell(ctx: RunContext, cell: Cell, labeler_name: str) -> pd.DataFrame:
    """Labels of every image of the cell, reusing the cached labels made under the same label key
    (ctx.label_key). A sample that came out non-finite, or an image of one flat colour, is invalid
    with that reason whatever the labeler says: no labeler's answer about it means anything."""
    key = ctx.label_key(labeler_name)
    cached = ctx.store.read_labels(cell.cell_id, labeler_name)
    if cached is not None:  # rows of another labeler configuration (or from before keys) are stale
        cached = cached[cached["labeler_key"] == key] if "labeler_key" in cached.columns else None
    seeds = cell.seeds
    have = set() if cached is None else set(cached["seed"].tolist())
    todo = [s for s in seeds if s not in have]
    if not todo:
        return cached[cached["seed"].isin(seeds)].sort_values("seed").reset_index(drop=True)
    labeler = ctx.labeler(labeler_name)
    nonfinite = unusable_images(ctx, cell)
    frames = [] if cached is None or cached.empty else [cached]
    for i in range(0, len(todo), 256):
        chunk = todo[i:i + 256]
        images = ctx.store.load_images(cell.cell_id, chunk)
        result = labeler.label(images)
        valid = result.valid.astype(bool).copy()
        reasons = [r or "" for r in (result.reasons or [None] * len(chunk))]
        flat = images.flatten(1)
        blank = (flat.amax(1) == flat.amin(1)).tolist()
        for j, seed in enumerate(chunk):
            if seed in nonfinite or blank[j]:
                valid[j], reasons[j] = False, IMAGE_CHECKS[0] if seed in nonfinite else IMAGE_CHECKS[1]
        columns = {"seed": chunk, "valid": valid, "reason": reasons}
        for attribute, probs in result.probs.items():
            for k, cls in enumerate(labeler.attributes[attribute]):
                columns[f"p:{attribute}:{cls}"] = probs[:, k].astype(np.float32)
        columns["labeler_key"] = key
        frames.append(pd.DataFrame(columns))
    frame = pd.concat(frames).drop_duplicates("seed", keep="last").sort_values("seed").reset_index(drop=True)
    ctx.store.write_labels(cell.cell_id, labeler_name, frame)
    reached("labels")
    return frame[frame["seed"].isin(seeds)].reset_index(drop=True)
