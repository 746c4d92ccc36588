"""Validating a labeler on a labelled image folder, and using what was measured.

`validate(name, options, data)` labels every image of DIR (the Hugging Face imagefolder layout:
images plus `metadata.jsonl`, one JSON object a line with `file_name` and ground-truth attribute
columns; a missing or null value is unknown) and measures, for each attribute the labeler labels
and the metadata has: the confusion matrix (rows true class, columns predicted, in the labeler's
class order, valid images only), the accuracy, the accuracy within each group of every other
metadata attribute, and the invalid rate within each group. `store` writes it as JSON to
$DIFFAUDIT_CACHE/labelers/<labeler>/<key>.json, keyed by (labeler, options, content of DIR).

`attach_validation` gives a labeler built for a run a `confusion()` from the newest stored
validation of the same labeler and options (any DIR), so error-aware estimates work for it, and
records the validation's provenance in its `describe()`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import numpy as np

METADATA = "metadata.jsonl"
BATCH = 32


class ValidationInputError(ValueError):
    """A problem with the data or the labeler's fit to it: one line, for the user."""


def cache_root() -> Path:
    """$DIFFAUDIT_CACHE (default ~/.cache/diffaudit), as for weight hashes."""
    return Path(os.environ.get("DIFFAUDIT_CACHE") or Path.home() / ".cache" / "diffaudit")


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def normalized_options(name: str, options: dict) -> dict:
    """The options as the labeler runs with them (constructor defaults filled in), less `device`
    (where a labeler runs does not change what it measures), JSON-safe: so a validation made with
    `--option width=256` is found by a suite that leaves width at its default 256."""
    from audit.registry import LABELERS, effective_params, resolve

    try:
        effective = effective_params(resolve(LABELERS, name, "labeler"), dict(options))
    except KeyError:
        effective = dict(options)
    effective.pop("device", None)
    effective.pop("name", None)
    return json.loads(_canonical(effective))


def options_key(name: str, options: dict) -> str:
    text = _canonical({"labeler": name, "options": normalized_options(name, options)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_digest(data: Path) -> str:
    """sha256 over every file of DIR: relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        h.update(path.relative_to(data).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def read_metadata(data: Path) -> list[dict]:
    """The rows of DIR/metadata.jsonl, checked: each names an existing, unique file_name."""
    if not data.is_dir():
        raise ValidationInputError(f"data directory {data} not found")
    path = data / METADATA
    if not path.is_file():
        raise ValidationInputError(f"{path} not found: the data directory needs a {METADATA} (one JSON object a line "
                                   "with file_name and the true attribute values)")
    rows, seen = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValidationInputError(f"{METADATA} line {number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise ValidationInputError(f"{METADATA} line {number}: needs a JSON object with a file_name string")
        file_name = row["file_name"]
        if file_name in seen:
            raise ValidationInputError(f"{METADATA} line {number}: duplicate file_name {file_name!r} "
                                       f"(first on line {seen[file_name]})")
        seen[file_name] = number
        if not (data / file_name).is_file():
            raise ValidationInputError(f"{METADATA} line {number}: file {file_name!r} not found in {data}")
        rows.append(row)
    if not rows:
        raise ValidationInputError(f"{path} lists no images")
    return rows


def _load(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValidationInputError(f"cannot read image {path.name!r}: {error}") from None


def _batches(data: Path, rows: list[dict]):
    """(indices, [B, 3, H, W] float tensor) for consecutive images of the same size."""
    import torch

    indices, arrays = [], []
    for i, row in enumerate(rows):
        array = _load(data / row["file_name"])
        if arrays and (array.shape != arrays[0].shape or len(arrays) == BATCH):
            yield indices, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)
            indices, arrays = [], []
        indices.append(i)
        arrays.append(array)
    if arrays:
        yield indices, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)


def _known(value) -> bool:
    return value is not None and value != ""


def validate(name: str, options: dict, data: Path, labeler=None) -> dict:
    """Label DIR with labeler `name` built with `options` and measure it (see the module doc)."""
    from audit import __version__
    from audit.registry import make_labeler

    data = Path(data)
    rows = read_metadata(data)
    if labeler is None:
        labeler = make_labeler(name, **options)
    vocabulary = {a: list(c) for a, c in labeler.attributes.items()}
    columns = list(dict.fromkeys(key for row in rows for key in row if key != "file_name"))
    measured = [a for a in columns if a in vocabulary]
    if not measured:
        raise ValidationInputError(f"labeler {name} labels none of the attributes in {METADATA} (it labels: "
                                   f"{', '.join(vocabulary)}; the metadata has: {', '.join(columns) or 'none'})")
    for number, row in enumerate(rows, 1):
        for a in measured:
            value = row.get(a)
            if _known(value) and value not in vocabulary[a]:
                raise ValidationInputError(f"{METADATA} row {number} ({row['file_name']}): {a} {value!r} is not "
                                           f"a class labeler {name} knows; allowed: {', '.join(vocabulary[a])}")

    n = len(rows)
    valid = np.zeros(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    predicted = {a: np.full(n, -1) for a in measured}
    for indices, images in _batches(data, rows):
        result = labeler.label(images)
        valid[indices] = np.asarray(result.valid, dtype=bool)
        for j, i in enumerate(indices):
            reasons[i] = result.reasons[j] if j < len(result.reasons) else None
        for a in measured:
            predicted[a][indices] = np.asarray(result.probs[a]).argmax(1)

    def groups(attribute: str) -> dict[str, np.ndarray]:
        values = [row.get(attribute) for row in rows]
        names = sorted({str(v) for v in values if _known(v)})
        return {g: np.array([_known(v) and str(v) == g for v in values]) for g in names}

    group_masks = {c: groups(c) for c in columns}
    attributes = {}
    for a in measured:
        classes = vocabulary[a]
        truth = np.array([classes.index(row[a]) if _known(row.get(a)) else -1 for row in rows])
        used = (truth >= 0) & valid
        confusion = np.zeros((len(classes), len(classes)), dtype=int)
        np.add.at(confusion, (truth[used], predicted[a][used]), 1)
        correct = used & (truth == predicted[a])
        by_group = {}
        for other in columns:
            if other == a:
                continue
            by_group[other] = {}
            for g, mask in group_masks[other].items():
                m = int((used & mask).sum())
                by_group[other][g] = {"n": m, "accuracy": float((correct & mask).sum() / m) if m else None}
        n_used = int(used.sum())
        attributes[a] = {"classes": classes, "confusion": confusion.tolist(), "n": n_used,
                         "accuracy": float(correct.sum() / n_used) if n_used else None,
                         "recall": [float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None
                                    for i in range(len(classes))],
                         "by_group": by_group}
    invalid_by_group = {c: {g: {"n": int(mask.sum()), "invalid": int((mask & ~valid).sum()),
                                "rate": float((mask & ~valid).sum() / mask.sum())}
                            for g, mask in group_masks[c].items()} for c in columns}
    invalid_reasons: dict[str, int] = {}
    for i in np.flatnonzero(~valid):
        key = reasons[i] or "unspecified"
        invalid_reasons[key] = invalid_reasons.get(key, 0) + 1
    data_hash = data_digest(data)
    normalized = normalized_options(name, options)
    okey = options_key(name, options)
    key = hashlib.sha256(f"{okey}:{data_hash}".encode()).hexdigest()[:16]
    return {
        "labeler": name, "options": normalized, "options_key": okey, "key": key,
        "provenance": {"data": str(data.resolve()), "data_hash": data_hash, "n": n,
                       "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                       "diffaudit": __version__},
        "n": n, "n_invalid": int((~valid).sum()), "invalid_rate": float((~valid).mean()),
        "invalid_reasons": invalid_reasons, "invalid_by_group": invalid_by_group, "attributes": attributes,
    }


def validation_dir(name: str) -> Path:
    return cache_root() / "labelers" / name


def store(result: dict) -> Path:
    path = validation_dir(result["labeler"]) / f"{result['key']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def find_validation(name: str, options: dict) -> tuple[Path, dict] | None:
    """The newest stored validation of labeler `name` with these options (any DIR)."""
    folder = validation_dir(name)
    if not folder.is_dir():
        return None
    okey, best = options_key(name, options), None
    for path in folder.glob("*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("options_key") != okey:
            continue
        date = record.get("provenance", {}).get("date", "")
        if best is None or date > best[0]:
            best = (date, path, record)
    return None if best is None else (best[1], best[2])


def confusion_counts(record: dict) -> dict[str, np.ndarray]:
    """{attribute: counts} of a validation, for the attributes every true class of which was
    seen (an error-aware estimate needs each confusion row)."""
    out = {}
    for a, entry in record["attributes"].items():
        counts = np.asarray(entry["confusion"], dtype=int)
        if counts.size and (counts.sum(axis=1) > 0).all():
            out[a] = counts
    return out


def attach_validation(labeler, name: str, options: dict):
    """Give `labeler` (as built for a run) a `confusion()` from its newest stored validation and
    record that validation in its `describe()`; a labeler with its own confusion() is left as is,
    one with neither says "not validated"."""
    describe = labeler.describe
    if getattr(labeler, "confusion", None) is not None:
        return labeler
    found = find_validation(name, options)
    if found is None:
        labeler.describe = lambda: {**describe(), "validation": "not validated"}
        return labeler
    path, record = found
    counts = confusion_counts(record)
    labeler.confusion = lambda: {a: c.copy() for a, c in counts.items()}
    provenance = {"file": str(path), "data": record["provenance"]["data"],
                  "data_hash": record["provenance"]["data_hash"], "n": record["provenance"]["n"],
                  "date": record["provenance"]["date"],
                  "accuracy": {a: e["accuracy"] for a, e in record["attributes"].items()}}
    labeler.describe = lambda: {**describe(), "validation": provenance}
    return labeler


def format_table(result: dict) -> str:
    """A compact text summary of a validation."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [f"{result['labeler']} on {result['provenance']['data']} (n={result['n']}, "
             f"invalid {result['n_invalid']} = {pct(result['invalid_rate'])})"]
    for a, entry in result["attributes"].items():
        classes = entry["classes"]
        width = max(8, *(len(c) + 2 for c in classes))
        first = max(len("true \\ predicted"), *(len(c) for c in classes)) + 2
        lines.append(f"{a}: accuracy {pct(entry['accuracy'])} on {entry['n']} valid images with a known {a}")
        header = "".join(c.rjust(width) for c in classes) + "recall".rjust(width)
        lines.append("  " + "true \\ predicted".ljust(first) + header)
        for c, row, recall in zip(classes, entry["confusion"], entry["recall"], strict=True):
            cells = "".join(str(v).rjust(width) for v in row) + pct(recall).rjust(width)
            lines.append(f"  {c:<{first}}" + cells)
        for other, groups in entry["by_group"].items():
            shown = "  ".join(f"{g} {pct(s['accuracy'])} (n={s['n']})" for g, s in groups.items())
            lines.append(f"  accuracy by {other}: {shown}")
    for c, groups in result["invalid_by_group"].items():
        shown = "  ".join(f"{g} {s['invalid']}/{s['n']} ({pct(s['rate'])})" for g, s in groups.items())
        lines.append(f"invalid by {c}: {shown}")
    return "\n".join(lines)
