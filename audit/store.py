"""The results store: run directories, atomic writes, resume by seed, label cache, index, lock.

Layout: OUT/cells/<cell_id>/{images/<seed>.png, batches/<n>.json, samples.parquet,
labels-<labeler>.parquet, metrics.json, manifest.json}, OUT/index.sqlite and the lock file
OUT/.diffaudit.lock. Every file is written to a temporary name and renamed into place, so a kill
at any moment leaves either the old file or the new one, never a torn one.

An image counts as generated only while a batch marker (batches/<n>.json) claims its seed. A
marker is written after all of its images and records what they were generated under: the seeds
sampled together, each seed's prompt and method choice (e.g. its allocated class) and the cell's
sample count; so a resumed or edited cell can tell, seed by seed, which images are still those a
fresh run would make. Before an image is generated again, its labels and then its marker's claim
are removed, so no label and no marker ever describes an image it was not made from.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from audit.errors import SuiteError
from audit.files import atomic_path, atomic_write_bytes, atomic_write_json, inside

LOCK_FILE = ".diffaudit.lock"  # flock'ed while a process writes the run directory
LOCK_OWNER = ".diffaudit.lock.json"  # who holds it, for the message of the process turned away
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last 12 bytes of every complete PNG


class RunLockedError(SuiteError):
    """Another process is writing the run directory; the message names it."""


class UnreadableImageError(SuiteError):
    """A stored image is missing or cannot be decoded; the message names the file and the fix."""


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def image_problem(path: Path, thorough: bool = True) -> str | None:
    """Why an image file cannot be used ("missing", "unreadable (...)"), or None. `thorough` reads
    it through PIL's verify (every chunk and its checksum); otherwise only its PNG end marker is
    checked, cheap enough for every image of a run and enough for what truncates files (a copy
    cut short, a full disk)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if not thorough:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, size - len(PNG_END)))
                complete = f.read() == PNG_END
        except OSError as e:
            return f"unreadable ({e.strerror or e})"
        return None if complete else "unreadable (truncated: no PNG end marker)"
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad files
        return f"unreadable ({' '.join(str(e).split()) or type(e).__name__})"
    return None


@dataclass(frozen=True)
class Claim:
    """A marker's claim on one seed: the image was generated under `prompt` and `choice`."""

    marker: dict
    prompt: str | None
    choice: object


class RunStore:
    def __init__(self, out: str | Path):
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)

    # -- the lock ----------------------------------------------------------------------------
    @contextmanager
    def lock(self, purpose: str = "run") -> Iterator[None]:
        """Hold OUT's lock while writing it. A second process is turned away at once with a
        RunLockedError naming the holder, rather than queued: runs take hours, and two runs on
        one directory are nearly always a mistake; a queue can retry on exit code 2. The lock is
        an flock, so the kernel releases it when its holder dies (even by kill -9)."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.out / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunLockedError(f"{self.out} is in use by another diffaudit process ({self._lock_holder()}): "
                                 "wait for it to finish, or write to another output directory") from None
        try:
            atomic_write_json(self.out / LOCK_OWNER, {
                "pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]})
            yield
        finally:
            (self.out / LOCK_OWNER).unlink(missing_ok=True)
            lock.release()

    def _lock_holder(self) -> str:
        try:
            owner = json.loads((self.out / LOCK_OWNER).read_text())
            return f"{owner['purpose']}, pid {owner['pid']} on {owner['host']} since {owner['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    # -- cells -------------------------------------------------------------------------------
    def cell_dir(self, cell_id: str) -> Path:
        return inside(self.out, Path("cells") / cell_id)

    def batch_marker(self, cell_id: str, index: int) -> Path:
        return self.cell_dir(cell_id) / "batches" / f"{index:06d}.json"

    def image_path(self, cell_id: str, seed: int) -> Path:
        return self.cell_dir(cell_id) / "images" / f"{seed:08d}.png"

    def next_index(self, cell_id: str) -> int:
        """The number of the next marker: one past the highest (a marker whose claims were all
        taken back stays, empty, so numbers are never reused)."""
        return max((m["index"] for m in self.batches(cell_id)), default=-1) + 1

    def write_batch(self, cell_id: str, index: int, seeds: list[int], prompts: list[str] | None,
                    images: torch.Tensor, seconds: float, stats: dict, event: str | None = None,
                    choices: list | None = None, samples: int | None = None) -> dict:
        """Images first, then the marker that declares them generated (and under what), then
        `event` in events.log (kept in the marker too, so recover_cell can replay it after a kill)."""
        for seed, image in zip(seeds, images, strict=True):
            array = (image.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
            with atomic_path(self.image_path(cell_id, seed)) as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
        marker = {"index": index, "seeds": [int(s) for s in seeds], "batch": [int(s) for s in seeds],
                  "prompts": prompts, "choices": choices, "samples": samples, "seconds": seconds, "stats": stats,
                  "event": event, "token": secrets.token_hex(8)}
        atomic_write_json(self.batch_marker(cell_id, index), marker)
        if event:
            self.log_event(event)
        return marker

    def copy_batch(self, source_cell: str, marker: dict, seeds: list[int], cell_id: str, index: int) -> None:
        """Reuse images of another cell (same model, method and seeds) that `marker` of that cell
        claims: images first, then a marker for them saying where they came from, then the event."""
        wanted = {int(s) for s in seeds}
        keep = [i for i, s in enumerate(marker["seeds"]) if int(s) in wanted]
        for i in keep:
            seed = marker["seeds"][i]
            atomic_write_bytes(self.image_path(cell_id, seed), self.image_path(source_cell, seed).read_bytes())
        event = (f"reused {source_cell} batch {marker['index']} for {cell_id} (the same images: the settings "
                 "differ only where the method does not read them)")
        claims = _claimed(marker)
        atomic_write_json(self.batch_marker(cell_id, index), {
            **marker, "index": index, "seeds": [marker["seeds"][i] for i in keep],
            "prompts": None if marker.get("prompts") is None else [claims[i][0] for i in keep],
            "choices": [claims[i][1] for i in keep] if any(c[1] is not None for c in claims) else None,
            "batch": marker.get("batch", marker["seeds"]), "copied_from": source_cell, "event": event,
            "token": secrets.token_hex(8)})
        self.log_event(event)

    def forget(self, cell_id: str, seeds: list[int]) -> None:
        """Before the images of `seeds` are generated again: drop their labels from every label
        cache, then take back every marker's claim on them. In this order a kill in between
        leaves at worst an image that is still claimed but unlabeled, never a label of an image
        that changed."""
        gone = {int(s) for s in seeds}
        folder = self.cell_dir(cell_id)
        for path in sorted(folder.glob("labels-*.parquet")):
            frame = pd.read_parquet(path)
            stale = frame["seed"].isin(gone)
            if stale.any():
                atomic_write_parquet(path, frame[~stale].reset_index(drop=True))
        for marker in self.batches(cell_id):
            claims = _claimed(marker)
            keep = [i for i, s in enumerate(marker["seeds"]) if int(s) not in gone]
            if len(keep) == len(marker["seeds"]):
                continue
            atomic_write_json(self.batch_marker(cell_id, marker["index"]), {
                **marker, "seeds": [marker["seeds"][i] for i in keep],
                "batch": marker.get("batch", marker["seeds"]),
                "prompts": None if marker.get("prompts") is None else [claims[i][0] for i in keep],
                "choices": [claims[i][1] for i in keep] if any(c[1] is not None for c in claims) else None})

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
        """Every marker of the cell, oldest first."""
        folder = self.cell_dir(cell_id) / "batches"
        if not folder.exists():
            return []
        return sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda m: m["index"])

    def claims(self, cell_id: str) -> dict[int, Claim]:
        """seed -> the claim of the newest marker that claims it."""
        out = {}
        for marker in self.batches(cell_id):
            for seed, (prompt, choice) in zip(marker["seeds"], _claimed(marker), strict=True):
                out[int(seed)] = Claim(marker, prompt, choice)
        return out

    def generation(self, cell_id: str, seeds: list[int]) -> dict:
        """What generated the images of `seeds`: the markers that claim them, the seconds spent
        on them (a marker's time shared out by image) and `images`, which says which images they
        are (first seed, count, and a fingerprint of the markers), so that metrics measured on
        them can tell later whether the cell's images are still those."""
        claims = self.claims(cell_id)
        used: dict[int, list] = {}
        for seed in seeds:
            claim = claims.get(int(seed))
            if claim is not None:
                used.setdefault(claim.marker["index"], [claim.marker, 0])[1] += 1
        seconds = sum(float(m["seconds"]) * k / max(1, len(m.get("batch") or m["seeds"])) for m, k in used.values())
        tokens = [[int(s), str(claims[s].marker.get("token", f"batch-{claims[s].marker['index']}"))
                   if s in claims else None] for s in seeds]
        fingerprint = hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16]
        return {"batches": [m for m, _ in used.values()], "seconds": seconds,
                "images": {"first": int(seeds[0]) if seeds else None, "count": len(seeds), "fingerprint": fingerprint}}

    def write_samples(self, cell_id: str, seeds: list[int]) -> pd.DataFrame:
        """samples.parquet: one row per image of `seeds` (the cell's current ones; images of
        other seeds may stay on disk): seed, prompt, batch (its marker) and file."""
        claims = self.claims(cell_id)
        rows = [{"seed": int(s), "prompt": claims[s].prompt, "batch": claims[s].marker["index"],
                 "image": f"images/{s:08d}.png"} for s in seeds if s in claims]
        frame = pd.DataFrame(rows, columns=["seed", "prompt", "batch", "image"]).sort_values("seed")
        atomic_write_parquet(self.cell_dir(cell_id) / "samples.parquet", frame)
        return frame

    def load_images(self, cell_id: str, seeds: list[int]) -> torch.Tensor:
        arrays = []
        for seed in seeds:
            path = self.image_path(cell_id, seed)
            try:
                with Image.open(path) as image:
                    arrays.append(np.asarray(image.convert("RGB")))
            except Exception:  # PIL raises many kinds of error on a damaged file
                raise UnreadableImageError(
                    f"{path.relative_to(self.out)} is {image_problem(path) or 'unreadable'}: run the suite on this "
                    "output directory again (without --measure-only) to generate it again") from None
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


def _claimed(marker: dict) -> list[tuple[str | None, object]]:
    """(prompt, choice) per seed a marker claims. Markers written before choices were recorded
    give the allocation they kept in their stats (methods that allocate logged it there)."""
    seeds = marker["seeds"]
    prompts = marker.get("prompts") or [None] * len(seeds)
    if "choices" in marker:
        choices = marker["choices"] or [None] * len(seeds)
    else:
        allocated = (marker.get("stats") or {}).get("allocated")
        choices = allocated if isinstance(allocated, list) and len(allocated) == len(seeds) else [None] * len(seeds)
    return list(zip(prompts, choices, strict=True))
