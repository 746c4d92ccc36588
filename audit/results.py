"""Typed records of what a run stores: a cell's measured results (metrics.json) and its manifest
(manifest.json), each with a `schema_version`.

The runner builds these and writes them; results.csv, results.json and the index are derived from
them; the report reads them back through the same models. A record written by another schema
version is not guessed at: the run re-measures it (the images stay), and the report says which
version it found and what to run. Fields the report and the tables rely on are declared; the
rest of a labeler's statistics (per-attribute counts, error-aware details)
travel as extra fields, kept as measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# 2: the first typed records (earlier metrics.json files carry no version).
SCHEMA_VERSION = 2


class SchemaMismatch(ValueError):
    """A stored record of another schema version (`version`), or not a record at all (`version`
    None); one line for the user."""

    def __init__(self, message: str, version: int | None = None):
        super().__init__(message)
        self.version = version


class Record(BaseModel):
    # NaN stays NaN (an undefined statistic, e.g. kappa of constant labels), as json.dumps wrote it
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")


class LabelerResult(Record):
    """One evaluation labeler's fairness statistics for a cell (audit.metrics.cell.fairness_metrics)."""

    n: int
    n_valid: int
    invalid_rate: float | None = None
    invalid_reasons: dict[str, int] = Field(default_factory=dict)
    classes: list[str]
    target: list[float]
    # absent when no image was valid (nothing to count)
    counts: list[int] | None = Field(None, exclude_if=lambda v: v is None)
    p_hat: list[float | None] | None = Field(None, exclude_if=lambda v: v is None)
    fd: float | None
    fd_lo: float | None = None
    fd_hi: float | None = None
    fd_floor: float | None = None
    fd_corrected: float | None = None
    fd_soft: float | None = None
    kl: float | None = None
    chi2_p: float | None = None
    chi2_method: str | None = None
    tost_p: float | None = None
    equivalent: bool | None = None
    verdict: Literal["on_target", "off_target", "inconclusive"] | None = None
    samples_needed: int | None = None
    error_aware: dict | None = None
    # heim_imbalance, deviation_ratio, normalized_entropy, soft_fd (audit.metrics.cell)
    literature: dict[str, float | None] | None = Field(None, exclude_if=lambda v: v is None)


class FidResult(Record):
    extractor: str
    reference: str
    n_requested: int | None = None
    n_reference: int | None = None
    n: int | None = None
    feature_dim: int | None = None
    value: float | None
    target_value: float | None = None
    key: str | None = None


class ClipScore(Record):
    value: float | None
    lo: float | None = None
    hi: float | None = None
    model: str | None = None
    truncated: int | None = None  # prompts longer than the CLIP's token limit, scored on their start
    reason: str | None = None
    key: str | None = None


class Cost(Record):
    seconds: float
    images: int
    images_per_s: float | None = None


class CellResult(Record):
    """A finished cell's metrics.json."""

    schema_version: Literal[2] = SCHEMA_VERSION
    status: Literal["done"] = "done"
    labelers: dict[str, LabelerResult]
    # sections a cell has only when measured (a metric the suite names, several labelers) are left
    # out of metrics.json otherwise, as they always were
    labelers_skipped: dict[str, str] = Field(default_factory=dict, exclude_if=lambda v: not v)
    agreement: dict | None = Field(None, exclude_if=lambda v: v is None)
    fid: FidResult | None = Field(None, exclude_if=lambda v: v is None)
    fid_extra: dict[str, FidResult] = Field(default_factory=dict, exclude_if=lambda v: not v)
    clip_score: ClipScore | None = Field(None, exclude_if=lambda v: v is None)
    cost: Cost
    guidance: dict[str, int] = Field(default_factory=dict)
    images: dict = Field(default_factory=dict)
    keys: dict = Field(default_factory=dict)

    def fids(self) -> list[FidResult]:
        """The primary FID first, then one per further extractor."""
        return ([self.fid] if self.fid else []) + list(self.fid_extra.values())


class CellOutcome(BaseModel):
    """A cell that has no metrics: not applicable to its model, images incomplete, not run yet."""

    status: Literal["not_applicable", "incomplete", "pending", "failed"]
    reason: str | None = None


class Manifest(Record):
    """A cell's manifest.json: everything that produced its images (model and weights revision,
    sampler, seeds, method configuration, labelers, library versions). Cells of finished images
    (images:DIR) have no sampler: steps, guidance and the scheduler are null."""

    schema_version: Literal[2] = SCHEMA_VERSION
    cell_id: str
    suite: str
    created: str
    model: dict
    scheduler: dict | None = None
    steps: int | None = None
    eta: float | None = None
    guidance_scale: float | None = None
    device: str
    prompt: str | None = None
    negative_prompt: str | None = None
    seeds: dict
    batch_size: int
    method: dict
    setting: dict
    labelers: dict
    probe_labeler: str | None = None
    versions: dict


def upgrade_run(out: Path) -> tuple[int, list[str]]:
    """Stamp a run directory's schema-1 records (metrics.json, manifest.json of every cell) as the
    current schema where they validate as such: schema 2 only added the version and the typed
    checks, so a schema-1 record that validates means the same. Returns (records upgraded, one line
    per record that does not validate and was left as it was: re-measure those)."""
    from audit.files import atomic_write_json

    upgraded, problems = 0, []
    for path in sorted(Path(out).glob("cells/*/*.json")):
        model = {"metrics.json": CellResult, "manifest.json": Manifest}.get(path.name)
        data = _read_json(path) if model is not None else None
        if not isinstance(data, dict) or data.get("schema_version", 1) != 1:
            continue
        if path.name == "metrics.json" and data.get("status") != "done":
            continue
        try:
            record = model.model_validate({**data, "schema_version": SCHEMA_VERSION})
        except ValidationError as error:
            first = error.errors()[0]
            problems.append(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
            continue
        atomic_write_json(path, record.model_dump(mode="json"))
        upgraded += 1
    return upgraded, problems


def read_record(path: Path, model: type[Record]) -> Record:
    """The record at `path`; SchemaMismatch (one line) when it is unreadable, of another schema
    version, or not such a record."""
    data = _read_json(path)
    if data is None:
        raise SchemaMismatch(f"{path}: unreadable")
    if not isinstance(data, dict):
        raise SchemaMismatch(f"{path}: not a {model.__name__} record")
    version = data.get("schema_version", 1)
    if version != SCHEMA_VERSION:
        raise SchemaMismatch(f"{path}: written with results schema {version}, this diffaudit reads schema "
                             f"{SCHEMA_VERSION}", version=version)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SchemaMismatch(f"{path}: not a {model.__name__} record ({where}: {first['msg']})") from None


def _read_json(path: Path):
    """The JSON document at `path`, or None when it cannot be read or parsed (a torn write)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
