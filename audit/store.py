"""The results store: run directories, atomic writes, batch-level resume, label cache, index.

Layout: OUT/cells/<cell_id>/{images/<seed>.png, batches/<b>.json, samples.parquet,
labels-<labeler>.parquet, metrics.json, manifest.json} and OUT/index.sqlite. Every file is
written to a temporary name and renamed into place, so a kill at any moment leaves either the
old file or the new one, never a torn one. A batch counts as generated only once its marker
(batches/<b>.json) exists, and the marker is written after all of its images.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image


class UnsafePathError(ValueError):
    pass


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write into; renamed onto `path` when the block ends, removed
    if it fails. Created as a plain open() would create it (0666 less the umask), not with
    mkstemp's 0600, which locked other users out of shared run directories and served reports."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=_json_default).encode())


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def inside(root: Path, relative: str | Path) -> Path:
    """root/relative, refusing anything that resolves outside root (.., absolute, symlinks)."""
    root = root.resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise UnsafePathError(f"path {str(relative)!r} escapes the output directory {root}")
    return candidate


class RunStore:
    def __init__(self, out: str | Path):
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)

    # -- cells -------------------------------------------------------------------------------
    def cell_dir(self, cell_id: str) -> Path:
        return inside(self.out, Path("cells") / cell_id)

    def batch_marker(self, cell_id: str, index: int) -> Path:
        return self.cell_dir(cell_id) / "batches" / f"{index:06d}.json"

    def batch_done(self, cell_id: str, index: int) -> bool:
        return self.batch_marker(cell_id, index).exists()

    def image_path(self, cell_id: str, seed: int) -> Path:
        return self.cell_dir(cell_id) / "images" / f"{seed:08d}.png"

    def write_batch(self, cell_id: str, index: int, seeds: list[int], prompts: list[str] | None,
                    images: torch.Tensor, seconds: float, stats: dict, event: str | None = None) -> None:
        """Images first, then the marker that declares the batch finished, then `event` in
        events.log (kept in the marker too, so recover_cell can replay it after a kill)."""
        for seed, image in zip(seeds, images, strict=True):
            array = (image.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
            with atomic_path(self.image_path(cell_id, seed)) as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
        atomic_write_json(self.batch_marker(cell_id, index), {
            "index": index, "seeds": seeds, "prompts": prompts, "seconds": seconds, "stats": stats, "event": event})
        if event:
            self.log_event(event)

    def copy_batch(self, source_cell: str, cell_id: str, index: int) -> None:
        """Reuse a finished batch of another cell (same model, method, seeds): images first,
        then a marker that says where they came from, then the event."""
        marker = json.loads(self.batch_marker(source_cell, index).read_text())
        for seed in marker["seeds"]:
            path = self.image_path(cell_id, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, self.image_path(source_cell, seed).read_bytes())
        event = f"reused {source_cell} batch {index} for {cell_id} (setting-independent method)"
        atomic_write_json(self.batch_marker(cell_id, index), {**marker, "copied_from": source_cell, "event": event})
        self.log_event(event)

    def recover_cell(self, cell_id: str) -> None:
        """Repair what a kill can leave behind in a cell: half-written temporary files (their
        batch has no marker and is regenerated), and finished batches whose event events.log
        lacks (the kill landed between the marker and the log line; the marker keeps the event)."""
        for partial in self.cell_dir(cell_id).rglob(".*.tmp"):
            partial.unlink(missing_ok=True)
        log = self.out / "events.log"
        logged = log.read_text() if log.exists() else ""
        for marker in self.batches(cell_id):
            if marker.get("event") and marker["event"] not in logged:
                self.log_event(f"{marker['event']} (logged on resume)")

    def log_event(self, message: str) -> None:
        """Append one line to OUT/events.log, the run's audit trail (generation events)."""
        with open(self.out / "events.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")

    def batches(self, cell_id: str) -> list[dict]:
        folder = self.cell_dir(cell_id) / "batches"
        if not folder.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]

    def write_samples(self, cell_id: str) -> pd.DataFrame:
        """samples.parquet: one row per image (seed, prompt, batch, file), from the markers."""
        rows = []
        for batch in self.batches(cell_id):
            prompts = batch["prompts"] or [None] * len(batch["seeds"])
            for seed, prompt in zip(batch["seeds"], prompts, strict=True):
                rows.append({"seed": seed, "prompt": prompt, "batch": batch["index"],
                             "image": f"images/{seed:08d}.png"})
        frame = pd.DataFrame(rows, columns=["seed", "prompt", "batch", "image"]).sort_values("seed")
        atomic_write_parquet(self.cell_dir(cell_id) / "samples.parquet", frame)
        return frame

    def load_images(self, cell_id: str, seeds: list[int]) -> torch.Tensor:
        arrays = [np.asarray(Image.open(self.image_path(cell_id, s)).convert("RGB")) for s in seeds]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255

    # -- labels ------------------------------------------------------------------------------
    def labels_path(self, cell_id: str, labeler: str) -> Path:
        return self.cell_dir(cell_id) / f"labels-{labeler}.parquet"

    def read_labels(self, cell_id: str, labeler: str) -> pd.DataFrame | None:
        path = self.labels_path(cell_id, labeler)
        return pd.read_parquet(path) if path.exists() else None

    def write_labels(self, cell_id: str, labeler: str, frame: pd.DataFrame) -> None:
        atomic_write_parquet(self.labels_path(cell_id, labeler), frame)

    # -- index -------------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.out / "index.sqlite"

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.index_path, timeout=30)
        con.execute("""CREATE TABLE IF NOT EXISTS cells (
            cell_id TEXT PRIMARY KEY, suite TEXT, model TEXT, method TEXT, attributes TEXT, target TEXT,
            prompt TEXT, status TEXT, reason TEXT, n INTEGER, seconds REAL, images_per_s REAL,
            updated TEXT DEFAULT CURRENT_TIMESTAMP)""")
        con.execute("""CREATE TABLE IF NOT EXISTS metrics (
            cell_id TEXT, labeler TEXT, metric TEXT, value REAL, lo REAL, hi REAL,
            PRIMARY KEY (cell_id, labeler, metric))""")
        return con

    def index_cell(self, row: dict, metrics: list[tuple] = ()) -> None:
        """Upsert one cell and its metrics in a single transaction."""
        with self._connect() as con:
            con.execute("""INSERT OR REPLACE INTO cells (cell_id, suite, model, method, attributes, target,
                prompt, status, reason, n, seconds, images_per_s) VALUES (:cell_id, :suite, :model, :method,
                :attributes, :target, :prompt, :status, :reason, :n, :seconds, :images_per_s)""", row)
            con.execute("DELETE FROM metrics WHERE cell_id = ?", (row["cell_id"],))
            con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                            [(row["cell_id"], *m) for m in metrics])
        con.close()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._connect() as con:
            rows = con.execute(sql, params).fetchall()
        con.close()
        return rows
