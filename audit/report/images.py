"""The images of a run as the report shows them: a cell's label tables by seed, each image's
predicted classes with their confidence, and thumbnails (small images copied, large ones shrunk)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from PIL import Image

from audit.files import UnsafePathError, inside
from audit.report.load import CellData, number, text

THUMB_MAX = 64  # images up to this size are copied as they are
THUMB_SIZE = 96  # larger ones get a thumbnail of this size


def read_parquet(cell: CellData, name: str) -> pd.DataFrame | None:
    try:
        path = inside(cell.dir, name)
    except UnsafePathError:
        return None
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception:  # a torn or foreign file: the page says the labels are missing
        return None


def rows_by_seed(frame: pd.DataFrame | None) -> dict[int, dict]:
    if frame is None or "seed" not in frame.columns:
        return {}
    out = {}
    for record in frame.to_dict("records"):
        seed = number(record.get("seed"))
        if seed is not None:
            valid = record.get("valid")
            record["valid"] = None if valid is None else bool(valid)
            out[int(seed)] = record
    return out


def image_labels(labeler: str, row: dict | None, attributes: list[str]) -> dict:
    """Per labeler: the predicted class and its confidence (max probability) per attribute of the
    setting, and every probability the labeler gave (for the drill-down)."""
    if row is None:
        return {"labeler": labeler, "missing": True, "valid": None, "reason": None, "pred": [], "all": []}
    grouped: dict[str, list[tuple[str, float | None]]] = {}
    for column, value in row.items():
        if isinstance(column, str) and column.startswith("p:") and column.count(":") >= 2:
            _, attribute, cls = column.split(":", 2)
            grouped.setdefault(attribute, []).append((cls, number(value)))
    pred = []
    for a in attributes:
        probs = [(c, p) for c, p in grouped.get(a, []) if p is not None]
        if probs:
            cls, p = max(probs, key=lambda cp: cp[1])
            pred.append({"attribute": a, "cls": cls, "conf": p})
    return {"labeler": labeler, "missing": False, "valid": row.get("valid"), "reason": text(row.get("reason")),
            "pred": pred, "all": [{"attribute": a, "probs": probs} for a, probs in grouped.items()]}


def thumbnail(source: Path, out_dir: Path, seed: int) -> tuple[str, int, int, bool] | None:
    """Small images are copied as they are; larger ones become a THUMB_SIZE JPEG thumbnail."""
    try:
        with Image.open(source) as image:
            image.load()  # decodes it all: a damaged file fails here, not in the reader's browser
            width, height = image.size
            out_dir.mkdir(parents=True, exist_ok=True)
            if max(width, height) <= THUMB_MAX:
                name = f"{seed:08d}.png"
                shutil.copyfile(source, out_dir / name)
                return name, width, height, True
            image = image.convert("RGB")
            image.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
            name = f"{seed:08d}.jpg"
            image.save(out_dir / name, format="JPEG", quality=85)
            return name, image.width, image.height, False
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
