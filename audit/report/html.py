"""The HTML audit report of one run directory: OUT/report/index.html, one drill-down page per
cell (OUT/report/cells/<key>.html) and OUT/report/assets/ (charts, thumbnails).

Static and self-contained: inline CSS and JS, no network, images as relative files, opens from
file://. Every user-supplied string goes through Jinja2 autoescaping; a Content-Security-Policy
allows only the page's own script as a second line of defence. The report never loads a model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from audit.files import UnsafePathError, inside
from audit.report import plots, summary
from audit.report.images import image_labels, read_parquet, rows_by_seed, thumbnail
from audit.report.load import CellData, ReportError, RunData, cell_key, load_run, number, text
from audit.report.render import build_then_swap, fmt_count, known_version, render, url
from audit.stages import reached
from audit.store import RunLockedError, RunStore, image_problem

GALLERY_MAX = 48
SCHEDULER_KEYS = ("timestep_spacing", "prediction_type", "beta_schedule", "num_train_timesteps", "clip_sample")


def write_report(out: Path, tolerance: float | None = None, warn=None) -> Path:
    """Render the report of a finished run directory; returns OUT/report/index.html. Holds OUT's
    lock while it writes OUT/report: a directory a run is writing is a one-line ReportError (its
    report comes when the run ends; results.csv has the cells finished so far). Images of measured
    cells that are missing or unreadable are listed in the report and, one line per cell, given to
    `warn` (default: stderr), never left to a silent "image missing"."""
    if tolerance is not None and not (0 < tolerance < 1):
        raise ReportError(f"--tolerance must be between 0 and 1 (a proportion per class), got {tolerance:g}")
    if not Path(out).is_dir():
        load_run(out)  # the one-line error for a missing or wrong path
    try:
        with RunStore(out).lock("diffaudit report"):
            run = load_run(out)
            suite_tol = number(run.suite.get("tolerance"))
            tol = tolerance if tolerance is not None else (suite_tol if suite_tol is not None else 0.05)
            report = Report(run, tol, overridden=tolerance is not None and tolerance != suite_tol)
            final = build_then_swap(run.out, "report", report.build)
    except RunLockedError as e:
        raise ReportError(f"{e}; the report is written when the run ends, and results.csv lists the cells "
                          "finished so far") from None
    warn = warn or (lambda message: print(message, file=sys.stderr))
    for cell_id, problems in report.image_problems.items():
        warn(f"warning: cell {cell_id}: {image_summary(problems)}; run the suite on {run.out} again to "
             "generate them again (its numbers were measured on them before)")
    return final / "index.html"


def image_summary(problems: list[dict], shown: int = 3) -> str:
    """'2 of its images are missing or unreadable: images/00000003.png (missing), ...'."""
    listed = ", ".join(f"{p['file']} ({p['problem']})" for p in problems[:shown])
    more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
    verb = "is" if len(problems) == 1 else "are"
    return f"{len(problems)} of its images {verb} missing or unreadable: {listed}{more}"


# -- statistics the report may have to redo --------------------------------------------------------

def verdict_at(counts, target, tolerance: float) -> dict | None:
    """The three-state verdict (audit.metrics.functional.fairness_verdict, as the runner computes
    it) at the report's tolerance, for cells measured at another one or before verdicts were stored."""
    from audit.metrics.functional import fairness_verdict

    arrays = _counts_and_target(counts, target)
    return None if arrays is None else fairness_verdict(*arrays, tolerance)


def _counts_and_target(counts, target) -> tuple[np.ndarray, np.ndarray] | None:
    """A cell's stored counts (as ints) and target as arrays; None when they cannot be tested."""
    counts = np.asarray([number(c) or 0 for c in counts], dtype=float)
    target = np.asarray([number(t) or 0 for t in target], dtype=float)
    if counts.sum() <= 0 or len(counts) != len(target):
        return None
    return counts.round().astype(int), target


def tost(counts, target, tolerance: float) -> tuple[float | None, bool | None]:
    """The TOST equivalence test of the cell's counts against the target within +-tolerance per
    class (audit.metrics.functional, the same test the runner used). Only needed when the report's
    tolerance differs from the one the metrics were computed with."""
    from audit.metrics.functional import tost_equivalence

    arrays = _counts_and_target(counts, target)
    if arrays is None:
        return None, None
    result = tost_equivalence(*arrays, tolerance)
    return number(result["p_value"]), bool(result["equivalent"])


# -- the report ------------------------------------------------------------------------------------

LITERATURE = ("heim_imbalance", "deviation_ratio", "normalized_entropy", "soft_fd")


def literature_rows(verdicts: list[dict]) -> list[dict]:
    """The verdict rows that carry the literature's definitions (results measured before they were
    columns have none), for the "comparable with the literature" table."""
    return [v for v in verdicts if v["status"] == "done" and any(v.get(k) is not None for k in LITERATURE)]


def _setting_label(attributes: str | None, target: str | None) -> str:
    return f"{attributes or '—'} ({target or '—'})"


def aim_label(method: dict) -> str | None:
    """The class shares a guided cell steered to, when calibration moved them off the target
    ("0.277/0.237/0.197/0.289"); None when it steered to the target itself or has no aim."""
    aim, target = method.get("aim"), method.get("target")
    if not isinstance(aim, list) or not aim or any(number(a) is None for a in aim):
        return None
    if isinstance(target, list) and len(target) == len(aim) and all(
            number(t) is not None and abs(number(a) - number(t)) < 5e-4 for a, t in zip(aim, target, strict=True)):
        return None
    return "/".join(f"{number(a):.3f}" for a in aim)


class Report:
    def __init__(self, run: RunData, tolerance: float, overridden: bool = False):
        self.run, self.tolerance, self.overridden = run, tolerance, overridden
        taken: set[str] = set()
        self.keys = {cid: cell_key(cid, taken) for cid in run.cells}
        self.primary = run.labelers[0] if run.labelers else None
        self.image_problems: dict[str, list[dict]] = {}  # cell id -> its missing or unreadable images
        self.problem_seeds: dict[str, dict[int, str]] = {}  # cell id -> {seed: what is wrong with its image}
        primaries = [r for r in (self.primary_row(cid) for cid in run.cells) if r is not None]
        # Quality is judged against a reference drawn with the target's attribute distribution where
        # every cell has one: against the model's own (biased) reference, FID grows with the very
        # balance a method achieves, so the chart would reward failing to debias. The index and every
        # cell page judge by this one rule.
        self.to_target = any(r["fid_target"] is not None for r in primaries) and all(
            r["fid_target"] is not None for r in primaries if r["fid"] is not None)
        self.colours = plots.method_colours(self.base_method(r["method"], run.cells[r["cell_id"]].manifest)
                                            for r in primaries)

    def base_method(self, display: str | None, manifest: dict | None = None) -> str:
        """The method's name (none, distribution_guidance, ...) behind its display label."""
        method = (manifest or {}).get("method") if isinstance((manifest or {}).get("method"), dict) else {}
        return str(self.run.method_spec(display).get("name") or method.get("name") or display or "—")

    def quality(self, cell_id: str, metrics: dict) -> list[dict]:
        """The cell's FIDs for its page, the one the index judges quality by first and labelled as
        the index's trade-off table labels it; the numbers are the index's (results rows), the
        details (extractor, reference, counts) from metrics.json."""
        fid = metrics.get("fid") if isinstance(metrics.get("fid"), dict) else {}
        row = self.primary_row(cell_id) or {}
        value = row.get("fid") if row.get("fid") is not None else number(fid.get("value"))
        to_target = row.get("fid_target") if row.get("fid_target") is not None else number(fid.get("target_value"))
        details = {"extractor": text(fid.get("extractor")) or row.get("fid_extractor"),
                   "reference": text(fid.get("reference")), "n_reference": fid.get("n_reference"), "n": fid.get("n")}
        suite = {"value": value, "id": "fid-suite", **details}
        target = {"value": to_target, "id": "fid-target", "label": "FID to target", **details,
                  "reference": "images drawn with the target's attribute distribution"}
        if self.to_target:
            return [{**target, "judged": True}, {**suite, "label": "FID to the suite's reference", "judged": False}]
        out = [{**suite, "label": "FID", "judged": True}]
        if to_target is not None:
            out.append({**target, "judged": False})
        return out

    # entry point: builds the whole folder into `root` (a temporary folder swapped in afterwards)
    def build(self, root: Path) -> None:
        t0 = time.perf_counter()
        self.root = root
        self.final = self.run.out / "report"
        cells = [self.cell_page(cid) for cid in self.run.cells]
        verdicts = [self.verdict(row) for row in self.run.rows]
        cost = self.cost_rows()
        tradeoff = self.tradeoff()
        self.class_records = self.class_table()
        per_prompt = self.prompt_view(verdicts)
        findings = summary.findings(**self.summary_input(verdicts), spreads=per_prompt)
        exports = self.export_tables(per_prompt, findings)
        context = {
            "suite": self.suite_facts(), "verdicts": verdicts, "findings": findings,
            "quality_name": self.quality_name(), "cells": cells, "tradeoff": tradeoff, "cost": cost,
            "methodology": self.methodology(), "downloads": self.downloads() + exports,
            "per_prompt": per_prompt, "literature": literature_rows(verdicts),
            "tolerance": self.tolerance, "overridden": self.overridden, "root": "",
            "has_prompts": any(r["prompt"] for r in self.run.rows),
            "counts": {"done": len(self.run.cells),
                       "not_applicable": len({r["cell_id"] for r in self.run.rows if r["status"] == "not_applicable"}),
                       **{state: sum(1 for v in verdicts if v["verdict"] == state)
                          for state in ("on_target", "off_target", "inconclusive")}},
            "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "image_problems": [{"cell_id": c["cell_id"], "key": c["key"], "summary": image_summary(c["image_problems"])}
                               for c in cells if c["image_problems"]],
        }
        from audit.report import galleries

        context["galleries"] = galleries.build(self, root)
        gallery_of = {cid: g["href"] for g in context["galleries"] for cid in g["cells"]}
        for cell in cells:
            cell["verdicts"] = [v for v in verdicts if v["cell_id"] == cell["cell_id"]]
            cell["same_seed"] = gallery_of.get(cell["cell_id"])
            render("cell.html.j2", root / "cells" / f"{cell['key']}.html", cell=cell, suite=context["suite"],
                   tolerance=self.tolerance, root="../")
        if per_prompt:
            render("prompts.html.j2", root / "prompts.html", groups=per_prompt, suite=context["suite"],
                   tolerance=self.tolerance, root="")
        reached("report")
        context["render_seconds"] = time.perf_counter() - t0
        render("index.html.j2", root / "index.html", **context)

    # -- per-class numbers and the executive summary ----------------------------------------------
    def class_table(self) -> list[dict]:
        """One record per (cell, labeler, class): observed share with its 95% interval, count,
        target, soft share and error-aware share; the summary's and the per-prompt view's input,
        exported as classes.csv / classes.parquet."""
        out = []
        for row in self.run.rows:
            m = self.labeler_metrics(row["cell_id"], row["labeler"])
            if row["status"] != "done" or not m:
                continue
            ea = m.get("error_aware") if isinstance(m.get("error_aware"), dict) else {}
            for i, cls in enumerate(m.get("classes") or []):
                interval = _at(m.get("p_intervals"), i)
                out.append({"model": row["model"], "method": row["method"], "setting": row["setting"],
                            "target_name": row["target"], "prompt": row["prompt"], "labeler": row["labeler"],
                            "cell_id": row["cell_id"], "cls": str(cls), "target": _at(m.get("target"), i),
                            "count": _at(m.get("counts"), i), "n_valid": number(m.get("n_valid")),
                            "p": _at(m.get("p_hat"), i), "lo": _at(interval, 0), "hi": _at(interval, 1),
                            "p_soft": _at(m.get("p_soft"), i), "error_aware_p": _at(ea.get("p"), i),
                            "error_aware_lo": _at(ea.get("lo"), i), "error_aware_hi": _at(ea.get("hi"), i)})
        return out

    def prompt_view(self, verdicts: list[dict]) -> list[dict]:
        """The per-prompt groups (prompts.table) with a chart each; [] when no model has several prompts."""
        from audit.report import prompts

        groups = prompts.table(verdicts, self.class_records, self.primary)
        for i, g in enumerate(groups):
            classes = [c["cls"] for c in g["rows"][0]["classes"]] if g["rows"] and g["rows"][0]["classes"] else []
            if len(classes) == 2:  # one share fixes the other: plot the second class only
                keep = [1]
            else:
                keep = list(range(min(4, len(classes))))
            status = ["differs" if e["differs_holm"] else "within" if e["within_holm"] else "neither"
                      for e in g["rows"]]
            shares = [[(c.get("p"), c.get("lo"), c.get("hi")) for j, c in enumerate(e["classes"]) if j in keep]
                      for e in g["rows"]]
            target = [g["rows"][0]["classes"][j].get("target") for j in keep] if classes else []
            g["chart"] = None
            if classes:
                title = f"{g['model']} · {g['setting']} · {g['method']}"
                path = plots.prompt_chart(self.root / "assets" / "plots" / f"prompts-{i}.png", title,
                                          [e["prompt"] for e in g["rows"]], [classes[j] for j in keep], shares,
                                          target, self.tolerance, status)
                g["chart"] = url(path.relative_to(self.root).as_posix())
            for e in g["rows"]:
                key = self.keys.get(e["cell_id"] or "")
                e["href"] = f"cells/{key}.html" if key else None
        return groups

    def export_tables(self, per_prompt: list[dict], findings: list[dict]) -> list[dict]:
        """Every number next to the report: results as Parquet, the per-class shares and the per-prompt
        table as CSV and Parquet, the summary as text."""
        from audit.report import prompts

        tables = {"results": self.results_frame(), "classes": pd.DataFrame(self.class_records)}
        if per_prompt:
            tables["prompts"] = pd.DataFrame(prompts.flat(per_prompt))
        files = []
        for name, frame in tables.items():
            targets = [f"{name}.parquet"] if name == "results" else [f"{name}.csv", f"{name}.parquet"]
            for target in targets:
                path = self.root / target
                if target.endswith(".csv"):
                    frame.to_csv(path, index=False)
                else:
                    _uniform_columns(frame).to_parquet(path, index=False)
                files.append({"name": target, "href": url(target), "size": path.stat().st_size})
        path = self.root / "summary.txt"
        path.write_text(summary.as_text(findings), encoding="utf-8")
        files.append({"name": "summary.txt", "href": url("summary.txt"), "size": path.stat().st_size})
        return files

    def results_frame(self) -> pd.DataFrame:
        """The run's results with every column it stored (results.json, else results.csv)."""
        json_file, csv_file = self.run.out / "results.json", self.run.out / "results.csv"
        try:
            if json_file.is_file():
                return pd.DataFrame(json.loads(json_file.read_text()))
            return pd.read_csv(csv_file)
        except (OSError, ValueError):  # read before, so only a file changed under the report gets here
            return pd.DataFrame(self.run.rows)

    def quality_name(self) -> str:
        return "FID to target" if self.to_target else "FID"

    def summary_input(self, verdicts: list[dict]) -> dict:
        """The executive summary's input (summary.findings' arguments), JSON-safe: the verdict rows
        of the first evaluation labeler, its per-class shares, and each method's name."""
        keep = ("model", "method", "attributes", "setting", "target", "prompt", "labeler", "status", "n", "n_valid",
                "fd", "fd_lo", "fd_hi", "fd_floor", "verdict", "samples_needed", "fid", "fid_target", "clip_score",
                "cell_id", "reason")
        methods = {str(r["method"]): self.base_method(r["method"], (self.run.cells.get(r["cell_id"] or "")
                                                                    or CellData("")).manifest)
                   for r in self.run.rows if r["method"]}
        classes = [{k: c[k] for k in ("cell_id", "labeler", "cls", "p", "lo", "hi", "target")}
                   for c in self.class_records if c["labeler"] == self.primary]
        return {"rows": [{k: v.get(k) for k in keep} for v in verdicts], "classes": classes,
                "methods": methods, "labeler": self.primary, "to_target": self.to_target,
                "quality_name": self.quality_name()}

    # -- suite facts and verdicts ----------------------------------------------------------------
    def suite_facts(self) -> dict:
        s = self.run.suite
        return {"name": self.run.name, "description": text(s.get("description")) or "",
                "samples": s.get("samples"), "seed": s.get("seed"), "labelers": self.run.labelers,
                "probe_labeler": text(s.get("probe_labeler")), "tolerance": number(s.get("tolerance")),
                "out": self.run.out.name}

    def labeler_metrics(self, cell_id: str | None, labeler: str | None) -> dict | None:
        cell = self.run.cells.get(cell_id or "")
        if cell is None or not cell.metrics:
            return None
        m = (cell.metrics.get("labelers") or {}).get(labeler or "")
        return m if isinstance(m, dict) else None

    def verdict(self, row: dict) -> dict:
        m = self.labeler_metrics(row["cell_id"], row["labeler"])
        tost_p, equivalent = row["tost_p"], row["equivalent"]
        stored_tol = number((m or {}).get("tolerance")) or number(self.run.suite.get("tolerance"))
        state, samples_needed = (m or {}).get("verdict"), number((m or {}).get("samples_needed"))
        off_target_p = number((m or {}).get("off_target_p"))
        retest = stored_tol is None or not math.isclose(stored_tol, self.tolerance, rel_tol=1e-9)
        if retest:
            tost_p, equivalent, off_target_p = None, None, None
            if m and m.get("counts") and m.get("target"):
                tost_p, equivalent = tost(m["counts"], m["target"], self.tolerance)
        if (retest or state is None) and m and m.get("counts") and m.get("target"):
            decided = verdict_at(m["counts"], m["target"], self.tolerance)
            if decided is not None:
                state, n_needed = decided["verdict"], decided["n_needed"]
                off_target_p = number(decided["off_target_p"])
                n, n_valid = number(m.get("n")), number(m.get("n_valid"))
                if n_needed is not None and n_valid:
                    samples_needed = math.ceil(n_needed * (n or n_valid) / n_valid)
        if row["status"] != "done":
            equivalent, state = None, None
        elif state not in ("on_target", "off_target"):
            state = "inconclusive"  # nothing measured, or too few samples to decide
        error_aware = []
        ea = (m or {}).get("error_aware") or {}
        classes = (m or {}).get("classes") or []
        for i, c in enumerate(classes):
            p = _at(ea.get("p"), i)
            if p is not None:
                error_aware.append({"cls": c, "p": p, "lo": _at(ea.get("lo"), i), "hi": _at(ea.get("hi"), i)})
        key = self.keys.get(row["cell_id"] or "")
        return {**row, "tost_p": tost_p, "equivalent": equivalent, "verdict": state, "samples_needed": samples_needed,
                "off_target_p": off_target_p,
                "error_aware_fd": row["error_aware_fd"] if row["error_aware_fd"] is not None else number(ea.get("fd")),
                "error_aware": error_aware, "href": f"cells/{key}.html" if key else None,
                "reason": self.run.reasons.get(row["cell_id"] or "") or _nothing_measured(row, m),
                "n_valid": row["n_valid"], "invalid_rate": number((m or {}).get("invalid_rate"))}

    # -- one cell ----------------------------------------------------------------------------------
    def cell_page(self, cell_id: str) -> dict:
        cell = self.run.cells[cell_id]
        key = self.keys[cell_id]
        rows = [r for r in self.run.rows if r["cell_id"] == cell_id]
        first = rows[0]
        metrics = cell.metrics or {}
        manifest = cell.manifest or {}
        found = metrics.get("labelers") if isinstance(metrics.get("labelers"), dict) else {}
        labelers = [name for name in self.run.labelers if name in found]
        labelers += [str(n) for n in found if n not in labelers]
        per = {name: found[name] for name in labelers if isinstance(found[name], dict)}
        base = per.get(labelers[0]) if labelers else None
        classes = list((base or {}).get("classes") or (manifest.get("setting") or {}).get("classes") or [])
        target = list((base or {}).get("target") or (manifest.get("setting") or {}).get("target") or [])
        page = {"cell_id": cell_id, "key": key, "model": first["model"], "method": first["method"],
                "setting": first["setting"], "target_label": first["target"], "prompt": first["prompt"],
                "n": first["n"], "problem": cell.problem, "labelers": labelers, "classes": classes,
                "target": target, "chart": None, "heatmap": None, "small_cells": [], "gallery": [],
                "image_problems": [], "gallery_note": "no cell directory", "invalid": [], "agreement": [],
                "class_rows": [],
                "fid": _fields(metrics.get("fid"), "value", "extractor", "reference", "n_reference", "n"),
                "quality": self.quality(cell_id, metrics) if isinstance(metrics.get("fid"), dict) or any(
                    r["fid"] is not None for r in rows) else [],
                "colour": self.colours.get(self.base_method(first["method"], manifest)),
                "fid_extra": [_fields(f, "value", "extractor", "reference", "n_reference", "n")
                              for f in (metrics.get("fid_extra") or {}).values() if isinstance(f, dict)]
                if isinstance(metrics.get("fid_extra"), dict) else [],
                "clip": _fields(metrics.get("clip_score"), "value", "lo", "hi", "model", "reason"),
                "cost": _fields(metrics.get("cost"), "seconds", "images", "images_per_s") or _fields({}, "seconds",
                                                                                                  "images_per_s"),
                "guidance": _fields(metrics.get("guidance"), "clipped_steps", "skipped_nonfinite")
                or _fields({}, "clipped_steps", "skipped_nonfinite"),
                "manifest": json.dumps(manifest, indent=2, default=str, sort_keys=True) if manifest else "",
                "method_config": _method_summary(manifest.get("method")),
                "clusters": _clusters(manifest.get("method"), (manifest.get("setting") or {}).get("attributes")),
                "status": metrics.get("status")}
        if not metrics and not cell.problem:
            page["problem"] = "no metrics.json in the cell directory"
        # class table and distribution chart
        for i, c in enumerate(classes):
            entry = {"cls": c, "target": _at(target, i), "by": []}
            for name in labelers:
                m = per.get(name) or {}
                interval = _at(m.get("p_intervals"), i)
                ea = m.get("error_aware") or {}
                entry["by"].append({"labeler": name, "p": _at(m.get("p_hat"), i), "count": _at(m.get("counts"), i),
                                    "lo": _at(interval, 0), "hi": _at(interval, 1), "soft": _at(m.get("p_soft"), i),
                                    "ea": _at(ea.get("p"), i), "ea_lo": _at(ea.get("lo"), i),
                                    "ea_hi": _at(ea.get("hi"), i)})
            page["class_rows"].append(entry)
        series = [(name, per[name].get("p_hat"), per[name].get("p_intervals")) for name in labelers
                  if per.get(name) and per[name].get("p_hat") and len(per[name]["p_hat"]) == len(classes)]
        if classes and series:
            path = plots.distribution_chart(self.root / "assets" / "plots" / f"{key}-distribution.png", classes,
                                            target, series)
            page["chart"] = url(path.relative_to(self.root).as_posix())
        # intersectional heatmap (joint settings), from the first labeler
        attributes = (manifest.get("setting") or {}).get("attributes")
        if not (isinstance(attributes, list) and attributes):
            attributes = self.run.setting_attributes(first["attributes"])
        attributes = [str(a) for a in attributes]
        if base and len(attributes) > 1 and base.get("p_hat") and all("&" in c for c in classes):
            class_lists = _class_lists(classes, len(attributes))
            if class_lists and math.prod(len(c) for c in class_lists) == len(base["p_hat"]):
                path = plots.heatmap(self.root / "assets" / "plots" / f"{key}-joint.png", attributes, class_lists,
                                     base["p_hat"], target, base.get("small_cells"))
                page["heatmap"] = url(path.relative_to(self.root).as_posix())
                page["heatmap_labeler"] = labelers[0]
                page["small_cells"] = [str(c) for c in base.get("small_cells") or []]
        # invalid samples and agreement
        for name in labelers:
            m = per.get(name) or {}
            reasons = m.get("invalid_reasons") if isinstance(m.get("invalid_reasons"), dict) else {}
            page["invalid"].append({"labeler": name, "n": m.get("n"), "n_valid": m.get("n_valid"),
                                    "rate": m.get("invalid_rate"),
                                    "reasons": sorted(((str(k) or "(none given)", v) for k, v in reasons.items()),
                                                      key=lambda kv: -(number(kv[1]) or 0))})
        agreement = metrics.get("agreement") if isinstance(metrics.get("agreement"), dict) else {}
        for attribute, pairs in agreement.items():
            for pair, kappa in (pairs.items() if isinstance(pairs, dict) else []):
                a, _, b = str(pair).partition("|")
                page["agreement"].append({"attribute": attribute, "a": a, "b": b, "kappa": number(kappa)})
        # gallery
        page["attributes"] = attributes
        if cell.dir is not None:
            page["gallery"], page["gallery_note"], problems = self.gallery(cell, key, labelers, attributes)
            self.problem_seeds[cell_id] = problems
            page["image_problems"] = [{"file": f"images/{seed:08d}.png", "problem": problem}
                                      for seed, problem in sorted(problems.items())]
            if page["image_problems"]:
                self.image_problems[cell_id] = page["image_problems"]
        return page

    def gallery(self, cell: CellData, key: str, labelers: list[str],
                attributes: list[str]) -> tuple[list, str, dict[int, str]]:
        """(items, note, problems): up to GALLERY_MAX images with their labels, and what is wrong
        with any image of the cell (every image is checked for its file and its PNG end; those
        shown are decoded)."""
        samples = read_parquet(cell, "samples.parquet")
        labels = {name: read_parquet(cell, f"labels-{name}.parquet") for name in labelers}
        seeds: list[int] = []
        for frame in [samples, *labels.values()]:
            if frame is not None and "seed" in frame.columns:
                seeds = sorted({int(s) for s in pd.to_numeric(frame["seed"], errors="coerce").dropna()})
                break
        if not seeds:
            images = cell.dir / "images"
            seeds = sorted(int(p.stem) for p in images.glob("*.png") if p.stem.isdigit()) if images.is_dir() else []
        total = len(seeds)
        problems = {}
        for seed in seeds:
            source = self._image_file(cell, seed)
            problem = "not a safe path" if source is None else image_problem(source, thorough=False)
            if problem:
                problems[seed] = problem
        if total > GALLERY_MAX:
            picks = np.unique(np.linspace(0, total - 1, GALLERY_MAX).round().astype(int))
            seeds = [seeds[i] for i in picks]
        prompts = {}
        if samples is not None and {"seed", "prompt"} <= set(samples.columns):
            prompts = {int(s): text(p) for s, p in zip(samples["seed"], samples["prompt"], strict=True)
                       if number(s) is not None}
        by_seed = {name: rows_by_seed(frame) for name, frame in labels.items()}
        items = []
        out_dir = self.root / "assets" / "thumbs" / key
        for seed in seeds:
            item = {"seed": seed, "prompt": prompts.get(seed), "thumb": None, "full": None, "labels": [],
                    "invalid": False, "width": None, "height": None}
            source = self._image_file(cell, seed)
            if source is not None and seed not in problems:
                thumb = thumbnail(source, out_dir, seed)
                if thumb is not None:
                    name, item["width"], item["height"], copied = thumb
                    item["thumb"] = url(f"assets/thumbs/{key}/{name}")
                    item["full"] = (f"../{item['thumb']}" if copied else
                                    url(os.path.relpath(source, self.final / "cells")))
                else:
                    problems[seed] = image_problem(source) or "unreadable"
            item["problem"] = problems.get(seed)
            for name in labelers:
                row = by_seed[name].get(seed)
                item["labels"].append(image_labels(name, row, attributes))
                if row is not None and row.get("valid") is False:
                    item["invalid"] = True
            items.append(item)
        note = f"{len(items)} of {total} images, evenly spaced over the seeds" if total > len(items) else \
            f"all {total} images"
        return items, note, problems

    def _image_file(self, cell: CellData, seed: int) -> Path | None:
        try:
            return inside(self.run.out, Path("cells") / cell.cell_id / "images" / f"{seed:08d}.png")
        except UnsafePathError:
            return None

    # -- across cells ------------------------------------------------------------------------------
    def primary_row(self, cell_id: str) -> dict | None:
        rows = [r for r in self.run.rows if r["cell_id"] == cell_id]
        for r in rows:
            if r["labeler"] == self.primary:
                return r
        return rows[0] if rows else None

    def tradeoff(self) -> dict:
        panels: dict[tuple, dict] = {}
        table = []
        for cid in self.run.cells:
            row = self.primary_row(cid)
            if row is None:
                continue
            spec = self.run.method_spec(row["method"])
            manifest = self.run.cells[cid].manifest or {}
            params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
            scale = number(params.get("scale"))
            if scale is None:
                scale = number((manifest.get("method") or {}).get("scale"))
            aim = aim_label(manifest.get("method") or {})
            base_name = self.base_method(row["method"], manifest)
            point = {"cell_id": cid, "method": row["method"] or "—", "base": base_name,
                     "colour": self.colours.get(base_name), "href": f"cells/{self.keys[cid]}.html",
                     "model": row["model"] or "—", "fd": row["fd"],
                     "fd_lo": row["fd_lo"], "fd_hi": row["fd_hi"], "fid": row["fid"],
                     "fid_target": row["fid_target"], "scale": scale,
                     "aim": aim,
                     "clip": row["clip_score"], "setting": row["setting"], "target": row["target"],
                     "prompt": row["prompt"], "extractor": row["fid_extractor"], "labeler": row["labeler"],
                     "group": (row["model"], row["attributes"], row["target"], row["prompt"], str(base_name),
                               json.dumps({k: v for k, v in params.items() if k != "scale"}, sort_keys=True,
                                          default=str))}
            title = _setting_label(row["setting"], row["target"])
            panel = panels.setdefault((row["attributes"], row["target"]), {"title": title, "points": [], "curves": []})
            panel["extractor"] = panel.get("extractor") or row["fid_extractor"]
            panel["points"].append(point)
            table.append(point)
        to_target = self.to_target
        for p in table:
            p["quality"] = p["fid_target"] if to_target else p["fid"]
        for panel in panels.values():
            name = f"FID[{panel['extractor']}]" if panel["extractor"] else "FID"
            panel["xlabel"] = f"{name}{' to target' if to_target else ''} (lower is better)"
        curves = 0
        for panel in panels.values():
            groups = defaultdict(list)
            for p in panel["points"]:
                if p["scale"] is not None:
                    groups[p["group"]].append(p)
            for members in groups.values():
                if len({m["scale"] for m in members}) >= 2:
                    panel["curves"].append(sorted(members, key=lambda m: m["scale"]))
                    curves += 1
        chart = None
        if panels:
            path = plots.tradeoff_chart(self.root / "assets" / "plots" / "tradeoff.png", list(panels.values()))
            chart = url(path.relative_to(self.root).as_posix())
        return {"chart": chart, "points": table, "curves": curves, "labeler": self.primary,
                "has_fid": any(p["fid"] is not None for p in table), "to_target": to_target,
                "has_aims": any(p["aim"] is not None for p in table)}

    def cost_rows(self) -> list[dict]:
        rows = []
        for cid in self.run.cells:
            row = self.primary_row(cid)
            if row is None:
                continue
            metrics = self.run.cells[cid].metrics or {}
            cost = metrics.get("cost") if isinstance(metrics.get("cost"), dict) else {}
            guidance = metrics.get("guidance") if isinstance(metrics.get("guidance"), dict) else {}
            spec = self.run.method_spec(row["method"])
            is_none = (spec.get("name") or row["method"]) == "none"
            base = self.base_method(row["method"], self.run.cells[cid].manifest)
            rows.append({"cell_id": cid, "model": row["model"], "method": row["method"], "setting": row["setting"],
                         "colour": self.colours.get(base),
                         "target": row["target"], "prompt": row["prompt"], "is_none": is_none,
                         "images": number(cost.get("images")) or row["n"],
                         "seconds": number(cost.get("seconds")) if cost else row["seconds"],
                         "images_per_s": number(cost.get("images_per_s")) if cost else row["images_per_s"],
                         "clipped": guidance.get("clipped_steps"), "skipped": guidance.get("skipped_nonfinite"),
                         "href": f"cells/{self.keys[cid]}.html"})
        baseline = {(r["model"], r["setting"], r["target"], r["prompt"]): r["seconds"] for r in rows if r["is_none"]}
        for r in rows:
            base = baseline.get((r["model"], r["setting"], r["target"], r["prompt"]))
            r["overhead"] = r["seconds"] / base if (base and r["seconds"] is not None) else None
        return rows

    def methodology(self) -> dict:
        manifests = [c.manifest for c in self.run.cells.values() if isinstance(c.manifest, dict)]
        models, labelers, probes, versions = {}, {}, [], defaultdict(set)
        samplers, seeds, devices, created = set(), set(), set(), []
        for m in manifests:
            model = m.get("model") if isinstance(m.get("model"), dict) else {}
            name = text(model.get("name")) or "—"
            sched = m.get("scheduler") if isinstance(m.get("scheduler"), dict) else {}
            sampler = ", ".join([str(sched.get("class") or "—")] + [f"{k}={sched[k]}" for k in SCHEDULER_KEYS
                                                                     if k in sched])
            entry = models.setdefault(name, {"name": name, "source": model.get("source"), "id": model.get("id"),
                                             "revision": model.get("revision"), "dtype": model.get("dtype"),
                                             "samplers": set(), "steps": set(), "guidance_scale": set()})
            entry["samplers"].add(sampler)
            # finished images (images:DIR) have no sampler: their steps and guidance are null
            entry["steps"].add("—" if m.get("steps") is None else str(m.get("steps")))
            entry["guidance_scale"].add("—" if m.get("guidance_scale") is None else str(m.get("guidance_scale")))
            samplers.add(sampler)
            s = m.get("seeds") if isinstance(m.get("seeds"), dict) else {}
            seeds.add(f"{s.get('rule', '—')} (first seed {s.get('first', '—')}, {s.get('count', '—')} images per "
                      f"cell, batch size {m.get('batch_size', '—')})")
            devices.add(str(m.get("device")))
            if m.get("created"):
                created.append(str(m["created"]))
            for lname, desc in (m.get("labelers") or {}).items():
                desc = desc if isinstance(desc, dict) else {}
                attrs = desc.get("attributes") if isinstance(desc.get("attributes"), dict) else {}
                labelers.setdefault(str(lname), {"name": str(lname), "source": desc.get("source"),
                                                 "attributes": "; ".join(f"{a}: {', '.join(map(str, c))}"
                                                                         for a, c in attrs.items()),
                                                 "validation": validation_text(desc.get("validation"))})
            method = m.get("method") if isinstance(m.get("method"), dict) else {}
            for probe in method.get("probes") or []:
                if isinstance(probe, dict):
                    acc = [x for x in (number(a) for a in probe.get("val_accuracy") or []) if x is not None]
                    probes.append({"method": method.get("name"), "model": name, "attribute": probe.get("attribute"),
                                   "labeler": probe.get("labeler"),
                                   "accuracy": f"{min(acc):.2f}–{max(acc):.2f}" if acc else None})
            for k, v in (m.get("versions") or {}).items():
                versions[str(k)].add(str(v))
        seen, unique_probes = set(), []
        for p in probes:
            k = (p["method"], p["model"], p["attribute"], p["labeler"])
            if k not in seen:
                seen.add(k)
                unique_probes.append(p)
        probe_labelers = {str(p["labeler"]) for p in unique_probes if p["labeler"]}
        if self.run.suite.get("probe_labeler"):
            probe_labelers.add(str(self.run.suite["probe_labeler"]))
        clash = sorted(probe_labelers & set(self.run.labelers))
        specs = self.run.suite.get("fid")  # one spec (older runs) or a list, primary first
        fid = [_fields(f, "extractor", "reference", "n") for f in (specs if isinstance(specs, list) else [specs])
               if isinstance(f, dict)]
        used = defaultdict(set)  # the reference counts the cells' FIDs were computed from
        for c in self.run.cells.values():
            metrics = c.metrics if isinstance(c.metrics, dict) else {}
            extra = metrics.get("fid_extra") if isinstance(metrics.get("fid_extra"), dict) else {}
            for entry in [metrics.get("fid"), *extra.values()]:
                if isinstance(entry, dict) and number(entry.get("n_reference")) is not None:
                    used[str(entry.get("extractor"))].add(int(number(entry["n_reference"])))
        for f in fid:
            counts = sorted(used.get(str(f["extractor"]), ()))
            f["requested"] = f["n"]
            f["n"] = " or ".join(f"{c:,}" for c in counts) if counts else None
        return {"models": [{**e, "samplers": sorted(e["samplers"]), "steps": ", ".join(sorted(e["steps"])),
                            "guidance_scale": ", ".join(sorted(e["guidance_scale"]))} for e in models.values()],
                "seeds": sorted(seeds), "devices": sorted(devices), "labelers": list(labelers.values()),
                "evaluation_labelers": self.run.labelers, "probes": unique_probes,
                "probe_labeler": text(self.run.suite.get("probe_labeler")), "clash": clash,
                "versions": {k: ", ".join(sorted(v)) for k, v in sorted(versions.items())},
                "audited_with": sorted({known_version(v) or "an unrecorded version"
                                        for v in versions.get("diffaudit", set())}),
                "created": (min(created), max(created)) if created else None, "fid": fid,
                "metrics": self.run.suite.get("metrics") or [], "n_manifests": len(manifests)}

    def downloads(self) -> list[dict]:
        files = []
        for name in ("results.csv", "results.json", "suite.json"):
            source = self.run.out / name
            if source.is_file() and not source.is_symlink():
                shutil.copyfile(source, self.root / name)
                files.append({"name": name, "href": url(name), "size": source.stat().st_size})
        return files


# -- helpers ----------------------------------------------------------------------------------------

def _uniform_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns holding values of several types (a hand-edited results file) as strings, so
    Parquet can store them; None stays missing."""
    frame = frame.copy()
    for column in frame.select_dtypes(include="object").columns:
        kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1:
            frame[column] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                             for v in frame[column]]
    return frame


def _nothing_measured(row: dict, metrics: dict | None) -> str | None:
    """Why a finished cell has no fairness numbers: none of its samples was valid for the labeler,
    with the most frequent reasons (e.g. "no valid sample: no face detected: 16")."""
    if row["status"] != "done" or row["n_valid"] is None or row["n_valid"] > 0:
        return None
    reasons = row.get("invalid_reasons")
    if not reasons and isinstance((metrics or {}).get("invalid_reasons"), dict):
        ordered = sorted(metrics["invalid_reasons"].items(), key=lambda kv: -(number(kv[1]) or 0))
        reasons = "; ".join(f"{k or 'no reason given'}: {v}" for k, v in ordered)
    return "no valid sample, nothing measured" + (f": {reasons}" if reasons else "")


def validation_text(validation) -> str:
    """A labeler's measured accuracy and its provenance, as `diffaudit labeler validate` stored it
    and the run recorded it in the labeler's describe(); "not validated" otherwise."""
    if not isinstance(validation, dict):
        return "not validated"
    accuracy = validation.get("accuracy") if isinstance(validation.get("accuracy"), dict) else {}
    shown = ", ".join(f"{a} {100 * number(v):.1f}%" for a, v in accuracy.items() if number(v) is not None)
    digest = str(validation.get("data_hash") or "")[:12]
    where = ", ".join(x for x in (f"data hash {digest}" if digest else "", text(validation.get("date")) or "") if x)
    return (f"accuracy {shown or '—'} on {fmt_count(validation.get('n'))} labelled images of "
            f"{text(validation.get('data')) or '—'}" + (f" ({where})" if where else ""))


def _fields(value, *keys) -> dict | None:
    """A dict from the run with exactly these keys (missing ones None); None if not a dict."""
    return {k: value.get(k) for k in keys} if isinstance(value, dict) else None


def _at(values, i):
    if not isinstance(values, list | tuple) or i >= len(values):
        return None
    v = values[i]
    return v if isinstance(v, list | tuple) else number(v)


def _class_lists(classes: list[str], k: int) -> list[list[str]] | None:
    """Per-attribute class lists from joint names 'a&b' (first attribute most significant)."""
    parts = [c.split("&") for c in classes]
    if any(len(p) != k for p in parts):
        return None
    lists: list[list[str]] = [[] for _ in range(k)]
    for p in parts:
        for i, c in enumerate(p):
            if c not in lists[i]:
                lists[i].append(c)
    return lists


def _clusters(config, audited) -> dict | None:
    """What a method that balances unlabelled clusters balanced (its config's `clusters`: sizes
    and, per evaluation labeler, each attribute's class shares per cluster), as a table, with how
    far apart the clusters lie on each attribute: balancing clusters moves an attribute only as
    far as the clusters differ in it, which the auditor must see next to the audited ones."""
    described = (config or {}).get("clusters") if isinstance(config, dict) else None
    if not isinstance(described, dict) or not isinstance(described.get("sizes"), list):
        return None
    sizes, shares = described["sizes"], (config.get("shares") or [])
    names = [f"cluster {i}" for i in range(len(sizes))]
    audited = [str(a) for a in audited or []]
    tables = []
    for labeler, attributes in (described.get("labelers") or {}).items():
        if not isinstance(attributes, dict):
            continue
        columns = []
        for attribute, by_cluster in attributes.items():
            if not isinstance(by_cluster, dict):
                continue
            classes = list(next((v for v in by_cluster.values() if isinstance(v, dict)), {}))
            share = [[(by_cluster.get(n) or {}).get(c, 0) for c in classes] for n in names]  # [cluster][class]
            cells = [" · ".join(f"{c} {p:.0%}" for c, p in zip(classes, row, strict=True)) for row in share]
            gap = max((max(column) - min(column) for column in zip(*share, strict=True)), default=0.0)
            columns.append({"attribute": attribute, "cells": cells, "audited": attribute in audited, "gap": gap})
        by_gap = sorted(columns, key=lambda c: (c["gap"], c["attribute"]), reverse=True)
        summary = ""
        if by_gap:
            summary = (f"The clusters differ most in {by_gap[0]['attribute']} (largest gap between clusters in one "
                       f"class's share: {by_gap[0]['gap']:.1%})")
            if any(c["audited"] for c in by_gap):
                summary += "; in the audited " + ", ".join(f"{c['attribute']} by {c['gap']:.1%}"
                                                           for c in by_gap if c["audited"])
            summary += ". Balancing the clusters moves an attribute only as far as they differ in it."
        tables.append({"labeler": labeler, "attributes": columns, "summary": summary})
    rows = [{"name": n, "size": sizes[i], "share": shares[i] if i < len(shares) else None}
            for i, n in enumerate(names)]
    return {"rows": rows, "tables": tables, "n": sum(v for v in sizes if isinstance(v, int | float))}


def _method_summary(config) -> list[tuple[str, str]]:
    if not isinstance(config, dict):
        return []
    out = []
    for k, v in config.items():
        if k == "probes":
            v = f"{len(v)} probe(s)" if isinstance(v, list) else v
        elif k == "clusters" and isinstance(v, dict) and isinstance(v.get("sizes"), list):
            v = f"{len(v['sizes'])} clusters of unguided samples: see what they capture, below"
        elif isinstance(v, dict | list):
            v = json.dumps(v, default=str)
        out.append((str(k), str(v)))
    return out








