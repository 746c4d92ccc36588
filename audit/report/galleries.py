"""Same-seed galleries: one page per (model, setting, prompt), rows = seeds, columns = methods.

Every method of a suite samples image i from the same seed, so a row shows what each method made
of the same starting noise: the picture that tells a reader whether a method changed the audited
attribute and left the identity alone. Each image carries its labels and confidence per
evaluation labeler; invalid images show their reason; a select filters the seeds by the class the
first labeler predicted (report.js). Pages go to OUT/report/galleries/<key>.html.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from audit.report.images import image_labels, read_parquet, rows_by_seed, thumbnail
from audit.report.load import cell_key
from audit.report.render import render, url

ROWS_MAX = 48  # seeds shown per page; beyond, evenly spaced over the seeds (as a cell page's gallery)


def pick(seeds: list[int], limit: int = ROWS_MAX) -> list[int]:
    """Up to `limit` seeds evenly spaced over the sorted seeds (the same rule as the cell pages, so
    their thumbnails are shared)."""
    seeds = sorted(seeds)
    if len(seeds) <= limit:
        return seeds
    picks = np.unique(np.linspace(0, len(seeds) - 1, limit).round().astype(int))
    return [seeds[i] for i in picks]


def groups(report) -> list[dict]:
    """[{key, model, setting, target, prompt, cells: [cell id, ...]}]: the measured cells of each
    (model, setting, target, prompt) in the results' order (the suite's method order)."""
    out: dict[tuple, dict] = {}
    for cid in report.run.cells:
        row = report.primary_row(cid)
        if row is None:
            continue
        k = (row["model"], row["attributes"], row["target"], row["prompt"])
        entry = out.setdefault(k, {"model": row["model"], "setting": row["setting"], "target": row["target"],
                                   "prompt": row["prompt"], "attributes": row["attributes"], "cells": []})
        entry["cells"].append(cid)
    taken: set[str] = set()
    for k, entry in out.items():
        entry["key"] = cell_key("__".join(str(x) for x in k if x is not None), taken)
    return list(out.values())


def _seeds(frame: pd.DataFrame | None) -> set[int]:
    if frame is None or "seed" not in frame.columns:
        return set()
    return {int(s) for s in pd.to_numeric(frame["seed"], errors="coerce").dropna()}


def build(report, root: Path) -> list[dict]:
    """Render every group's page under root/galleries; returns the groups (with `href`, `n_seeds`,
    `shown`) for the index."""

    built = []
    for group in groups(report):
        columns, seeds = [], None
        for cid in group["cells"]:
            cell = report.run.cells[cid]
            row = report.primary_row(cid)
            labels = {}
            if cell.dir is not None:
                labels = {name: read_parquet(cell, f"labels-{name}.parquet") for name in report.run.labelers}
            found = set().union(*(_seeds(f) for f in labels.values())) if labels else set()
            if not found and cell.dir is not None:
                images = cell.dir / "images"
                found = {int(p.stem) for p in images.glob("*.png") if p.stem.isdigit()} if images.is_dir() else set()
            seeds = found if seeds is None else seeds & found
            base = report.base_method(row["method"], cell.manifest)
            columns.append({"cell_id": cid, "cell": cell, "method": row["method"], "colour": report.colours.get(base),
                            "href": f"../cells/{report.keys[cid]}.html",
                            "labels": {n: rows_by_seed(f) for n, f in labels.items() if f is not None}})
        seeds = sorted(seeds or [])
        shown = pick(seeds)
        attributes = report.run.setting_attributes(group["attributes"])
        classes: list[str] = []
        rows = []
        for seed in shown:
            items = []
            for col in columns:
                item = {"seed": seed, "thumb": None, "problem": None, "labels": [], "invalid": False, "cls": ""}
                cell, key = col["cell"], report.keys[col["cell_id"]]
                source = report._image_file(cell, seed) if cell.dir is not None else None
                problem = None if source is None else report.problem_seeds.get(col["cell_id"], {}).get(seed)
                if source is None or problem:
                    item["problem"] = problem or "missing"
                else:
                    out_dir = root / "assets" / "thumbs" / key
                    existing = [p for p in (out_dir / f"{seed:08d}.png", out_dir / f"{seed:08d}.jpg") if p.exists()]
                    name = existing[0].name if existing else (thumbnail(source, out_dir, seed) or (None,))[0]
                    if name is None:
                        item["problem"] = "unreadable"
                    else:
                        item["thumb"] = "../" + url(f"assets/thumbs/{key}/{name}")
                for labeler in report.run.labelers:
                    labeled = col["labels"].get(labeler, {}).get(seed)
                    if labeler not in col["labels"]:
                        continue
                    item["labels"].append(image_labels(labeler, labeled, attributes))
                    if labeled is not None and labeled.get("valid") is False:
                        item["invalid"] = True
                first = item["labels"][0] if item["labels"] else None
                if item["invalid"] or item["problem"]:
                    item["cls"] = "invalid"
                elif first and not first["missing"] and len(first["pred"]) == len(attributes):
                    item["cls"] = "&".join(p["cls"] for p in first["pred"])
                    if item["cls"] not in classes:
                        classes.append(item["cls"])
                items.append(item)
            rows.append({"seed": seed, "images": items})
        setting_classes = _setting_classes(report, group["cells"])
        classes = [c for c in setting_classes if c in classes] + [c for c in classes if c not in setting_classes]
        page = {**group, "columns": [{k: v for k, v in c.items() if k not in ("cell", "labels")} for c in columns],
                "rows": rows, "classes": classes, "n_seeds": len(seeds), "shown": len(shown),
                "has_invalid": any(i["cls"] == "invalid" for r in rows for i in r["images"]),
                "labelers": report.run.labelers, "attributes": attributes}
        render("gallery.html.j2", root / "galleries" / f"{group['key']}.html", g=page, suite=report.suite_facts(),
               root="../")
        built.append({**{k: v for k, v in page.items() if k not in ("rows",)},
                      "href": f"galleries/{group['key']}.html"})
    return built


def _setting_classes(report, cells: list[str]) -> list[str]:
    for cid in cells:
        m = report.labeler_metrics(cid, report.primary)
        if m and isinstance(m.get("classes"), list):
            return [str(c) for c in m["classes"]]
        manifest = report.run.cells[cid].manifest or {}
        setting = manifest.get("setting") if isinstance(manifest.get("setting"), dict) else {}
        if isinstance(setting.get("classes"), list):
            return [str(c) for c in setting["classes"]]
    return []
