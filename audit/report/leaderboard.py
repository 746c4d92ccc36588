"""One sortable leaderboard page across runs and suites.

A table per attribute setting (attributes and target), one row per run x model x method (x prompt
x evaluation labeler). Every metric keeps its interval where it has one, and sorts in its own better
direction on the first click (FD, KL, FID, seconds: lower first; chi-square p, CLIP score,
images/s: higher first); a second click reverses. Missing values always sort last.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from audit.files import atomic_path
from audit.report.load import ReportError, RunData, load_run, number
from audit.report.render import render, url

METRICS = [
    # key, header, better, note
    ("fd", "FD [95% CI]", "lower", "lower is better"),
    ("kl", "KL", "lower", "lower is better"),
    ("chi2_p", "χ² p", "higher", "higher: closer fit"),
    ("fid", "FID", "lower", "lower is better"),
    ("clip_score", "CLIP score", "higher", "higher is better"),
    ("seconds", "Seconds", "lower", "lower is better"),
    ("images_per_s", "Images/s", "higher", "higher is better"),
]
BETTER = {key: better for key, _, better, _ in METRICS}


def write_leaderboard(outs: list[Path], dest: Path) -> Path:
    """Render the leaderboard of the given run directories into dest (an .html file, or a folder
    that gets leaderboard.html); returns the page's path."""
    if not outs:
        raise ReportError("give at least one run directory")
    runs: list[RunData] = []
    seen = set()
    for out in outs:
        run = load_run(out)
        if run.out not in seen:
            seen.add(run.out)
            runs.append(run)
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / "leaderboard.html"
    if dest.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"{dest}: the leaderboard is an HTML page; give a path ending in .html")
    dest.parent.mkdir(parents=True, exist_ok=True)
    groups = build_groups(runs, dest.parent.resolve())
    with atomic_path(dest) as tmp:
        render("leaderboard.html.j2", tmp, groups=groups, metrics=METRICS,
               runs=[{"name": r.name, "out": str(r.out), "rows": len(r.rows)} for r in runs],
               has_prompts=any(row["prompt"] for g in groups for row in g["rows"]),
               generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return dest


def _run_label(run: RunData, runs_named: dict[str, int]) -> str:
    """The suite name, with the run directory's name when several runs share the suite name."""
    return run.name if runs_named[run.name] == 1 else f"{run.name} ({run.out.name})"


def build_groups(runs: list[RunData], page_dir: Path) -> list[dict]:
    named: dict[str, int] = {}
    for run in runs:
        named[run.name] = named.get(run.name, 0) + 1
    groups: dict[tuple, dict] = {}
    for run in runs:
        label = _run_label(run, named)
        report = run.out / "report" / "index.html"
        href = url(os.path.relpath(report, page_dir)) if report.is_file() else None
        tolerance = number(run.suite.get("tolerance"))
        for row in run.rows:
            key = (row["setting"] or "—", row["target"] or "—")
            group = groups.setdefault(key, {"attributes": key[0], "target": key[1], "rows": []})
            group["rows"].append({**row, "run": label, "report": href, "tolerance": tolerance,
                                  "applicable": row["status"] == "done"})
    out = []
    for key in sorted(groups, key=lambda k: (k[0].count("×"), k)):
        group = groups[key]
        # default order: FD ascending (better first), missing last, then method and model
        group["rows"].sort(key=lambda r: (r["fd"] is None, r["fd"] if r["fd"] is not None else 0.0,
                                          str(r["method"]), str(r["model"])))
        group["id"] = f"setting-{len(out) + 1}"
        group["methods"] = sorted({str(r["method"]) for r in group["rows"]})
        out.append(group)
    return out
