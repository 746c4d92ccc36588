"""Read a finished run directory (results, suite, index, per-cell metrics and manifests) for rendering.

Nothing here trusts the run directory: every path is resolved with `audit.files.inside`, every
number may be missing (None, NaN, a string), and every problem with the run as a whole becomes a
one-line `ReportError`.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from audit.files import UnsafePathError, inside
from audit.results import SCHEMA_VERSION, CellResult, Manifest, SchemaMismatch, read_record


class ReportError(ValueError):
    """A run directory that cannot be rendered; the message is one line meant for the user."""


NUMERIC = ["n", "n_valid", "fd", "fd_lo", "fd_hi", "fd_floor", "fd_corrected", "fd_soft", "kl", "chi2_p", "tost_p",
           "samples_needed", "error_aware_fd", "error_aware_fd_lo", "error_aware_fd_hi", "heim_imbalance",
           "deviation_ratio", "normalized_entropy", "soft_fd", "fid",
           "fid_target", "clip_score", "seconds", "images_per_s"]
TEXT = ["model", "method", "attributes", "target", "prompt", "labeler", "status", "fid_extractor", "cell_id",
        "invalid_reasons", "verdict", "chi2_method"]


def number(value) -> float | None:
    """A finite float, or None for anything missing or unparseable (None, NaN, inf, '', 'abc')."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def text(value) -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return str(value)


def fid_values(record: dict) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """({extractor: FID}, {extractor: FID to the target-matched reference}) of one result row:
    the primary extractor's `fid`/`fid_target` columns and every extra `fid[X]`/`fid_target[X]`."""
    fids, fid_targets = {}, {}
    if record.get("fid_extractor"):
        fids[str(record["fid_extractor"])] = number(record.get("fid"))
        fid_targets[str(record["fid_extractor"])] = number(record.get("fid_target"))
    for column, value in record.items():
        for kind, into in (("fid", fids), ("fid_target", fid_targets)):
            if column.startswith(f"{kind}[") and column.endswith("]"):
                into[column[len(kind) + 1:-1]] = number(value)
    return fids, fid_targets


def flag(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and number(value) is not None:
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


@dataclass
class CellData:
    cell_id: str
    dir: Path | None = None
    metrics: dict | None = None
    manifest: dict | None = None
    problem: str | None = None


@dataclass
class RunData:
    out: Path
    suite: dict
    rows: list[dict]
    cells: dict[str, CellData] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.suite.get("name") or self.out.name)

    @property
    def labelers(self) -> list[str]:
        """Evaluation labelers in the suite's order, then any others found in the results."""
        names = [str(n) for n in self.suite.get("labelers") or []]
        for row in self.rows:
            if row["labeler"] is not None and row["labeler"] not in names:
                names.append(row["labeler"])
        return names

    def setting_attributes(self, key: str | None) -> list[str]:
        """The attributes of a setting from its key ('skin_tonexeyeglasses'), via the suite."""
        for setting in self.suite.get("settings") or []:
            attributes = setting.get("attributes") if isinstance(setting, dict) else None
            if isinstance(attributes, list) and "x".join(map(str, attributes)) == key:
                return [str(a) for a in attributes]
        return [key] if key else []

    def method_spec(self, display: str | None) -> dict:
        """The suite's {name, label, params} for a method's display name ({} when unknown)."""
        for m in self.suite.get("methods") or []:
            if isinstance(m, dict) and (m.get("label") or m.get("name")) == display:
                return m
        return {}


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: cannot read {what}: {str(e).splitlines()[0]}") from None


def _clean_row(raw: dict) -> dict:
    row = {k: text(raw.get(k)) for k in TEXT}
    row.update({k: number(raw.get(k)) for k in NUMERIC})
    row["equivalent"] = flag(raw.get("equivalent"))
    return row


def read_results(out: Path) -> list[dict]:
    json_file, csv_file = out / "results.json", out / "results.csv"
    if json_file.is_file():
        records = _read_json(json_file, "results")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ReportError(f"{json_file}: expected a list of result rows")
    elif csv_file.is_file():
        try:
            frame = pd.read_csv(csv_file, keep_default_na=False, na_values=[""], dtype=str)
        except (OSError, ValueError, pd.errors.ParserError) as e:
            raise ReportError(f"{csv_file}: cannot read results: {str(e).splitlines()[0]}") from None
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    else:
        raise ReportError(f"{out}: no results.json or results.csv (is it the output directory of `diffaudit run`?)")
    rows = [_clean_row(r) for r in records]
    if not rows:
        raise ReportError(f"{out}: the results hold no rows")
    return rows


def _read_reasons(out: Path) -> dict[str, str]:
    """Why cells were not applicable, from index.sqlite (read-only; absent or broken -> {})."""
    path = out / "index.sqlite"
    if not path.is_file():
        return {}
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT cell_id, reason FROM cells WHERE reason IS NOT NULL").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    return {str(c): str(r) for c, r in rows if r}


def _load_cell(out: Path, cell_id: str) -> CellData:
    cell = CellData(cell_id)
    try:
        folder = inside(out, Path("cells") / cell_id)
    except (UnsafePathError, ValueError, OSError):
        cell.problem = "the cell id is not a safe path inside the run directory"
        return cell
    if folder == out.resolve() or not folder.is_dir():
        cell.problem = "no cell directory"
        return cell
    cell.dir = folder
    for name, model in (("metrics", CellResult), ("manifest", Manifest)):
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        try:
            setattr(cell, name, read_record(path, model).model_dump(mode="json"))
        except SchemaMismatch as error:
            if error.version is not None:  # a whole run of another schema: say how to upgrade it
                raise ReportError(f"{path}: written with results schema {error.version}, this diffaudit reads "
                                  f"schema {SCHEMA_VERSION}: run `diffaudit upgrade {out}` (or re-measure with "
                                  f"`diffaudit run SUITE -o {out} --measure-only`)") from None
            cell.problem = f"{name}.json is unreadable or not a {model.__name__} record"
    return cell


def load_run(out: str | Path) -> RunData:
    out = Path(out)
    if not out.exists():
        raise ReportError(f"{out}: no such run directory")
    if not out.is_dir():
        raise ReportError(f"{out}: not a directory (give the output directory of `diffaudit run`)")
    out = out.resolve()
    rows = read_results(out)
    suite = {}
    if (out / "suite.json").is_file():
        suite = _read_json(out / "suite.json", "the suite")
        if not isinstance(suite, dict):
            raise ReportError(f"{out / 'suite.json'}: expected a mapping")
        lists = [k for k in ("models", "methods", "settings", "labelers") if not isinstance(suite.get(k, []), list)]
        if lists:  # a hand-edited or damaged file: what the report iterates must be lists
            raise ReportError(f"{out / 'suite.json'}: {lists[0]} must be a list (as `diffaudit run` writes it)")
    run = RunData(out=out, suite=suite, rows=rows, reasons=_read_reasons(out))
    labels = {}
    for setting in suite.get("settings") or []:
        attributes = setting.get("attributes") if isinstance(setting, dict) else None
        if isinstance(attributes, list) and attributes:
            labels["x".join(map(str, attributes))] = " × ".join(map(str, attributes))
    for row in rows:
        row["setting"] = labels.get(row["attributes"] or "", row["attributes"])
    for row in rows:
        cid = row["cell_id"]
        if cid and cid not in run.cells and row["status"] == "done":
            run.cells[cid] = _load_cell(out, cid)
    return run


def cell_key(cell_id: str, taken: set[str]) -> str:
    """A file-name-safe, unique, readable key for a cell's page and assets."""
    import hashlib
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", cell_id).strip(".-")[:80] or "cell"
    if slug != cell_id or slug in taken:
        slug = f"{slug[:70]}-{hashlib.sha256(cell_id.encode()).hexdigest()[:8]}"
    taken.add(slug)
    return slug
