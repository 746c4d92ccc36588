"""The efficacy table: one row per setting x method, from the results.csv of one or more runs.

    python benchmarks/efficacy_table.py runs/efficacy [runs/efficacy-t2i] \\
        --json benchmarks/results/efficacy_eta1.json --markdown benchmarks/results/efficacy_eta1.md

Columns: FD [95% interval], KL, FID per extractor (FID[synthfaces], FID[mobilenet_v2], ...: the
primary `fid` column under its `fid_extractor`, plus every `fid[X]` column), seconds, and the
device each cell was sampled on when the runs mix devices (seconds are then not comparable). Per
setting the lowest FD is marked (bold in markdown, `lowest_fd` in JSON), and the efficacy bar is
checked and printed: distribution guidance has the lowest FD of the setting, at an FID no larger
than sample guidance's (for every extractor both were measured with). The markdown is a plain
GitHub table, ready to paste into the docs (docs/findings/). Exit code 0 whatever the bar says; 2 when a run
cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from audit.report.load import fid_values, number, text
from audit.spec import SettingSpec

EXTRACTOR_ORDER = ("synthfaces", "mobilenet_v2", "inception")
DASH = "—"


class TableError(ValueError):
    """A run that cannot be tabulated; one line for the user."""


def read_run(out: Path, labeler: str | None) -> list[dict]:
    """The rows of a run's results.csv for one evaluation labeler (default: the run's first)."""
    csv = out / "results.csv"
    if not csv.is_file():
        raise TableError(f"{out}: no results.csv (is it the output directory of `diffaudit run`?)")
    try:
        frame = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise TableError(f"{csv}: cannot read: {str(e).splitlines()[0]}") from None
    missing = {"model", "method", "attributes", "target", "status", "fd"} - set(frame.columns)
    if missing:
        raise TableError(f"{csv}: missing columns {', '.join(sorted(missing))}")
    suite = {}
    if (out / "suite.json").is_file():
        suite = json.loads((out / "suite.json").read_text())
    base_names = {m.get("label") or m.get("name"): m.get("name") for m in suite.get("methods") or []}
    setting_names = {"x".join(s["attributes"]): " × ".join(s["attributes"]) for s in suite.get("settings") or []}
    target_names = {}  # (attributes key, target label) -> "dark 0.9, light 0.1" for explicit targets
    for raw in suite.get("settings") or []:
        try:
            setting = SettingSpec.model_validate(raw)
        except ValueError:
            continue
        if setting.target != "uniform":
            target_names[setting.key, setting.target_label] = ", ".join(
                f"{c} {v:g}" for c, v in zip(setting.joint_classes(), setting.target_vector(), strict=True))
    labelers = [x for x in frame.get("labeler", pd.Series(dtype=object)).dropna().unique()]
    chosen = labeler or (labelers[0] if labelers else None)
    if labeler and labeler not in labelers:
        raise TableError(f"{csv}: no rows judged by {labeler!r}; labelers: {', '.join(map(str, labelers)) or 'none'}")
    rows = []
    for record in frame.astype(object).where(frame.notna(), None).to_dict("records"):
        if record.get("labeler") not in (chosen, None):
            continue
        fids, fid_targets = fid_values(record)
        method = str(record["method"])
        rows.append({"run": str(out), "model": str(record["model"]), "attributes": str(record["attributes"]),
                     "attributes_label": setting_names.get(str(record["attributes"]), str(record["attributes"])),
                     "target": str(record["target"]),
                     "target_label": target_names.get((str(record["attributes"]), str(record["target"])),
                                                      str(record["target"])),
                     "prompt": text(record.get("prompt")), "method": method,
                     "base_method": base_names.get(method, method), "status": text(record.get("status")),
                     "labeler": text(record.get("labeler")), "n": number(record.get("n")),
                     "n_valid": number(record.get("n_valid")), "fd": number(record.get("fd")),
                     "fd_lo": number(record.get("fd_lo")), "fd_hi": number(record.get("fd_hi")),
                     "kl": number(record.get("kl")), "fid": fids, "fid_target": fid_targets,
                     "seconds": number(record.get("seconds")), "cell_id": text(record.get("cell_id")),
                     "device": cell_device(out, text(record.get("cell_id")))})
    return rows


def cell_device(out: Path, cell_id: str | None) -> str | None:
    """The device a cell was sampled on, from its manifest (None for unrun cells)."""
    manifest = out / "cells" / cell_id / "manifest.json" if cell_id else None
    if manifest is None or not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("device")


def setting_label(row: dict, with_model: bool) -> str:
    label = f"{row['attributes_label']} {row['target_label']}"
    if row["prompt"]:
        label += f" ({row['prompt']})"
    return f"{row['model']}: {label}" if with_model else label


def build_table(runs: list[Path], labeler: str | None = None, dg: str = "distribution_guidance",
                sg: str = "sample_guidance") -> dict:
    rows, seen = [], set()
    for out in runs:
        for row in read_run(out, labeler):
            key = (row["model"], row["attributes"], row["target"], row["prompt"], row["method"])
            if key in seen:  # the same cell in two runs: the first run given wins
                continue
            seen.add(key)
            rows.append(row)
    if not rows:
        raise TableError(f"{', '.join(map(str, runs))}: no result rows")
    with_model = len({r["model"] for r in rows}) > 1
    extractors = ordered_extractors({e for r in rows for e in r["fid"]})
    settings: dict[str, list[dict]] = {}
    for row in rows:
        row["setting"] = setting_label(row, with_model)
        settings.setdefault(row["setting"], []).append(row)
    bars = []
    for name, members in settings.items():
        done = [r for r in members if r["status"] == "done" and r["fd"] is not None]
        best = min((r["fd"] for r in done), default=None)
        for r in members:
            r["lowest_fd"] = best is not None and r in done and r["fd"] == best
        bars.append(check_bar(name, members, dg, sg, extractors))
    return {"labeler": rows[0]["labeler"], "runs": [str(r) for r in runs], "extractors": extractors,
            "bar": f"{dg} has the lowest FD in every setting at an FID no larger than {sg}'s",
            "passed": all(b["passed"] for b in bars) if bars else False,
            "settings": bars, "rows": rows}


def ordered_extractors(names) -> list[str]:
    """FID extractors in EXTRACTOR_ORDER, then any others by name."""
    return sorted(names, key=lambda e: (EXTRACTOR_ORDER.index(e) if e in EXTRACTOR_ORDER else len(EXTRACTOR_ORDER), e))


def quality_fid(row: dict, extractor: str) -> float | None:
    """FID against the reference drawn with the target's attribute distribution (fid_target):
    the quality a debiased cell should be judged by. FID against the model's own biased
    reference grows with the very balance a method achieves, so it would reward failing to
    debias. Falls back to that FID only for rows without a target reference."""
    value = row["fid_target"].get(extractor)
    return row["fid"].get(extractor) if value is None else value


def check_bar(setting: str, members: list[dict], dg: str, sg: str, extractors: list[str]) -> dict:
    find = lambda name: next((r for r in members if r["method"] == name and r["status"] == "done"), None)  # noqa: E731
    d, s = find(dg), find(sg)
    result = {"setting": setting, "passed": False, "lowest_fd": None, "fid": {}}
    if d is None or s is None or d["fd"] is None:
        result["reason"] = f"needs finished {dg} and {sg} cells"
        return result
    result["lowest_fd"] = bool(d["lowest_fd"])
    for e in extractors:
        a, b = quality_fid(d, e), quality_fid(s, e)
        if a is not None and b is not None:
            result["fid"][e] = {dg: a, sg: b, "no_larger": a <= b}
    if not result["fid"]:
        result["reason"] = "no FID measured for both methods"
        return result
    result["passed"] = result["lowest_fd"] and all(v["no_larger"] for v in result["fid"].values())
    return result


def _fmt(value, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def markdown(table: dict) -> str:
    devices = {r["device"] for r in table["rows"] if r["status"] == "done"}
    mixed = len(devices - {None}) > 1
    head = ["Setting", "Method", "FD [95% CI]", "KL", *[f"FID[{e}] to target" for e in table["extractors"]], "Seconds",
            *(["Device"] if mixed else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for r in table["rows"]:
        if r["status"] != "done":
            cells = [f"{DASH} ({r['status'] or 'no result'})", DASH, *[DASH] * len(table["extractors"]), DASH]
        else:
            fd = f"{_fmt(r['fd'], 3)} [{_fmt(r['fd_lo'], 3)}, {_fmt(r['fd_hi'], 3)}]"
            cells = [f"**{fd}**" if r["lowest_fd"] else fd, _fmt(r["kl"], 3),
                     *[_fmt(quality_fid(r, e), 2) for e in table["extractors"]], _fmt(r["seconds"], 0)]
        if mixed:
            cells.append(r["device"] or DASH)
        lines.append("| " + " | ".join([r["setting"].replace("|", "\\|"), r["method"], *cells]) + " |")
    lines.append("")
    lines.append(f"FD: lower is better, bold = lowest in its setting; judged by {table['labeler'] or DASH}. "
                 "FID to target: against a reference drawn with the target's attribute distribution (for "
                 "none, the model's own biased reference would be kinder). FIDs with different extractors "
                 "are different metrics." + (" Seconds compare only within a device." if mixed else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--labeler", default=None, help="evaluation labeler (default: each run's first)")
    parser.add_argument("--dg", default="distribution_guidance", help="method (display name) the bar is about")
    parser.add_argument("--sg", default="sample_guidance", help="method (display name) it is compared with")
    args = parser.parse_args(argv)
    try:
        table = build_table(args.runs, args.labeler, args.dg, args.sg)
    except (TableError, json.JSONDecodeError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    rendered = markdown(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(rendered)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    print(rendered)
    for bar in table["settings"]:
        detail = bar.get("reason") or (f"lowest FD: {'yes' if bar['lowest_fd'] else 'no'}; " + "; ".join(
            f"FID[{e}] {v[args.dg]:.2f} vs {v[args.sg]:.2f}" for e, v in bar["fid"].items()))
        print(f"{'PASS' if bar['passed'] else 'FAIL'}  {bar['setting']}: {detail}")
    print(f"bar ({table['bar']}): {'PASS' if table['passed'] else 'FAIL'}")
    return table


if __name__ == "__main__":
    main()
