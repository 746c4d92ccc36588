"""The scale sweep's trade-off: each method's FD-vs-FID curve, and which reaches a given FD at the
lower FID.

    python benchmarks/sweep_table.py runs/efficacy-sweep --json benchmarks/results/efficacy_sweep.json \\
        --markdown benchmarks/results/efficacy_sweep.md [--fd 0.05 0.1]

A curve is one method with every param but the scale fixed (distribution guidance with
`push: assign` is a curve of its own), one point per fixed scale; the `none` cell is its own point.
Calibrated cells each land somewhere on their curve, and FID to target moves by ~1 between
neighbouring scales, so comparing two calibrated cells confounds the method with where its
calibration stopped. Here each curve is asked instead: what is the lowest FID to target any of
its scales reaches at an FD at or below each level (`--fd`)? The bar "distribution guidance
beats sample guidance: lower FID at equal or lower FD" is then read per level and per extractor:
PASS where a distribution-guidance curve's lowest FID is no larger than sample guidance's. Exit
code 0 whatever the bar says; 2 when a run cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficacy_table import DASH, TableError, _fmt, ordered_extractors, quality_fid, read_run

LEVELS = (0.05, 0.1)  # the FD bar on a binary uniform target, and twice it


def curve_names(suite: dict) -> dict[str, tuple[str, float | str | None]]:
    """Display name -> (curve name, scale): the method's name plus the params that tell its curves
    apart (those not shared by every entry of that method), so `push: assign` names its own curve."""
    methods = [m for m in suite.get("methods") or [] if isinstance(m, dict)]
    params = {id(m): {k: v for k, v in (m.get("params") or {}).items() if k != "scale"} for m in methods}
    names = {}
    for m in methods:
        same_method = [params[id(o)] for o in methods if o.get("name") == m.get("name")]
        keys = sorted({k for p in same_method for k in p})
        differing = [k for k in keys if len({json.dumps(p.get(k), default=str) for p in same_method}) > 1]
        own = params[id(m)]
        suffix = ", ".join(f"{k} {own[k]}" for k in differing if k in own)
        names[m.get("label") or m["name"]] = (f"{m['name']} ({suffix})" if suffix else m["name"],
                                              (m.get("params") or {}).get("scale"))
    return names


def build(run: Path, labeler: str | None, levels: list[float], dg: str, sg: str) -> dict:
    suite_file = run / "suite.json"
    if not suite_file.is_file():
        raise TableError(f"{run}: no suite.json (is it the output directory of `diffaudit run`?)")
    names = curve_names(json.loads(suite_file.read_text()))
    rows = [r for r in read_run(run, labeler) if r["status"] == "done" and r["fd"] is not None]
    if not rows:
        raise TableError(f"{run}: no finished cells")
    extractors = ordered_extractors({e for r in rows for e in r["fid"]})
    settings = {}
    for r in rows:
        curve, scale = names.get(r["method"], (r["method"], None))
        point = {"method": r["method"], "scale": scale, "fd": r["fd"], "fd_lo": r["fd_lo"], "fd_hi": r["fd_hi"],
                 "fid": {e: quality_fid(r, e) for e in extractors}, "seconds": r["seconds"],
                 "cell_id": r["cell_id"]}
        setting = f"{r['attributes_label']} {r['target_label']}"
        settings.setdefault(setting, {}).setdefault(curve, []).append(point)
    out = []
    for setting, curves in settings.items():
        for points in curves.values():
            points.sort(key=scale_order)
        best = {curve: {e: {str(level): lowest_fid(points, level, e) for level in levels} for e in extractors}
                for curve, points in curves.items()}
        verdicts = []
        for curve in [c for c in curves if c == dg or c.startswith(f"{dg} (")]:
            for e in extractors:
                for level in levels:
                    mine, theirs = best[curve][e][str(level)], best.get(sg, {}).get(e, {}).get(str(level))
                    passed = None if mine is None or theirs is None else mine["fid"] <= theirs["fid"]
                    verdicts.append({"curve": curve, "against": sg, "extractor": e, "fd_level": level,
                                     "fid": None if mine is None else mine["fid"],
                                     "against_fid": None if theirs is None else theirs["fid"], "passed": passed})
        out.append({"setting": setting, "curves": curves, "lowest_fid": best, "verdicts": verdicts})
    return {"run": str(run), "labeler": rows[0]["labeler"], "extractors": extractors, "fd_levels": levels,
            "bar": f"{dg} reaches each FD level at an FID to target no larger than {sg}'s", "settings": out}


def scale_order(point: dict) -> tuple:
    """Fixed scales in increasing order, then `auto` and unscaled points."""
    scale = point["scale"]
    return (0, scale, "") if isinstance(scale, int | float) else (1, 0, str(scale))


def lowest_fid(points: list[dict], level: float, extractor: str) -> dict | None:
    """The point of a curve with the lowest FID among those whose FD is at or below `level`."""
    reached = [p for p in points if p["fd"] <= level and p["fid"].get(extractor) is not None]
    if not reached:
        return None
    p = min(reached, key=lambda p: p["fid"][extractor])
    return {"fid": p["fid"][extractor], "fd": p["fd"], "scale": p["scale"], "method": p["method"]}


def _scale(point: dict) -> str:
    scale = point["scale"]
    return DASH if scale is None else f"{scale:g}" if isinstance(scale, int | float) else str(scale)


def markdown(table: dict) -> str:
    e0 = table["extractors"]
    lines = []
    for s in table["settings"]:
        lines += [f"**{s['setting']}** (judged by {table['labeler'] or DASH}; FID to target)", "",
                  "| Curve | Scale | FD [95% CI] | " + " | ".join(f"FID[{e}]" for e in e0) + " | Seconds |",
                  "|---|---:|---:|" + "---:|" * len(e0) + "---:|"]
        for curve, points in s["curves"].items():
            for p in points:
                fd = f"{p['fd']:.3f} [{_fmt(p['fd_lo'], 3)}, {_fmt(p['fd_hi'], 3)}]"
                lines.append(f"| {curve} | {_scale(p)} | {fd} | "
                             + " | ".join(_fmt(p["fid"].get(e), 2) for e in e0) + f" | {_fmt(p['seconds'], 0)} |")
        lines += ["", "Lowest FID to target at FD at or below each level (scale in brackets):", "",
                  "| Curve | " + " | ".join(f"FD <= {level:g}, FID[{e}]" for e in e0 for level in table["fd_levels"])
                  + " |", "|---|" + "---:|" * (len(e0) * len(table["fd_levels"]))]
        for curve, per in s["lowest_fid"].items():
            cells = []
            for e in e0:
                for level in table["fd_levels"]:
                    b = per[e][str(level)]
                    cells.append(DASH if b is None else f"{b['fid']:.2f} (s={_scale(b)})")
            lines.append(f"| {curve} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, metavar="RUN_DIR")
    parser.add_argument("--fd", type=float, nargs="+", default=list(LEVELS), help="FD levels to compare at")
    parser.add_argument("--labeler", default=None, help="evaluation labeler (default: the run's first)")
    parser.add_argument("--dg", default="distribution_guidance", help="method whose curves the bar is about")
    parser.add_argument("--sg", default="sample_guidance", help="curve they are compared with")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        table = build(args.run, args.labeler, args.fd, args.dg, args.sg)
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    text = markdown(table)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    for s in table["settings"]:
        for v in s["verdicts"]:
            word = {True: "PASS", False: "FAIL", None: "----"}[v["passed"]]
            print(f"{word}  {s['setting']}: {v['curve']} at FD <= {v['fd_level']:g}, FID[{v['extractor']}] "
                  f"{_fmt(v['fid'], 2)} vs {v['against']} {_fmt(v['against_fid'], 2)}")
    return table


if __name__ == "__main__":
    main()
