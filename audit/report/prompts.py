"""The per-prompt view of text models audited with several prompts (e.g. 20 occupations).

For each (model, setting, method), judged by the first evaluation labeler: one row per prompt
with its class shares and 95% intervals against the target, FD, and the chi-square and TOST
p-values adjusted across the group's prompts by Holm (family-wise error) and Benjamini-Hochberg
(false discovery rate) through `audit.metrics.functional.adjust_pvalues` (statsmodels'
multipletests). A prompt is flagged "differs" where the adjusted chi-square p is below alpha and
"within ε" where the adjusted TOST p is: with 20 prompts, about one in twenty fair prompts would
otherwise be flagged by chance. The verdict follows the adjusted p-values of the tests behind
it (audit.metrics.functional.fairness_verdict): off target where the adjusted off-target
(minimum-effect) p is below alpha, on target where the adjusted TOST p is, else inconclusive;
`verdict_holm` is the page's, `verdict_bh` is exported beside it. Also the spread across prompts
(mean and max FD).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from audit.metrics.functional import adjust_pvalues
from audit.report.load import number

ALPHA = 0.05


def _adjusted(values: list[float | None], method: str) -> list[float | None]:
    """Adjusted p-values of the rows that have one; None where a row has none."""
    present = [i for i, v in enumerate(values) if v is not None]
    out: list[float | None] = [None] * len(values)
    if present:
        adjusted = adjust_pvalues(np.array([values[i] for i in present]), method)
        for i, a in zip(present, adjusted, strict=True):
            out[i] = float(a)
    return out


def table(verdicts: list[dict], class_records: list[dict], labeler: str | None) -> list[dict]:
    """[{model, setting, target, method, labeler, rows: [...], spread: {...}}] for every
    (model, setting, target, method) measured under two or more prompts."""
    classes = defaultdict(list)
    for c in class_records:
        classes[(c["cell_id"], c["labeler"])].append(c)
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for v in verdicts:
        if v["status"] == "done" and v["prompt"] is not None and v["labeler"] == labeler:
            grouped[(v["model"], v["attributes"], v["target"], v["method"])].append(v)
    out = []
    for (model, _, target, method), rows in grouped.items():
        if len({r["prompt"] for r in rows}) < 2:
            continue
        chi2 = [number(r["chi2_p"]) for r in rows]
        tost = [number(r["tost_p"]) for r in rows]
        off = [number(r.get("off_target_p")) for r in rows]
        adjusted = {f"{name}_{how}": _adjusted(values, how)
                    for name, values in (("chi2", chi2), ("tost", tost), ("off", off)) for how in ("holm", "fdr_bh")}
        entries = []
        for i, r in enumerate(rows):
            entry = {"prompt": r["prompt"], "cell_id": r["cell_id"], "href": r.get("href"), "n_valid": r["n_valid"],
                     "fd": r["fd"], "fd_lo": r["fd_lo"], "fd_hi": r["fd_hi"], "verdict": r["verdict"],
                     "samples_needed": r.get("samples_needed"), "chi2_p": chi2[i], "tost_p": tost[i],
                     "off_target_p": off[i], "classes": classes.get((r["cell_id"], labeler), [])}
            for k, values in adjusted.items():
                entry[k] = values[i]
            entry["differs_holm"] = _below(entry["chi2_holm"])
            entry["differs_bh"] = _below(entry["chi2_fdr_bh"])
            entry["within_holm"] = _below(entry["tost_holm"])
            entry["within_bh"] = _below(entry["tost_fdr_bh"])
            entry["verdict_holm"] = adjusted_verdict(entry["off_holm"], entry["tost_holm"])
            entry["verdict_bh"] = adjusted_verdict(entry["off_fdr_bh"], entry["tost_fdr_bh"])
            entries.append(entry)
        fds = [e["fd"] for e in entries if e["fd"] is not None]
        out.append({"model": model, "setting": rows[0]["setting"], "target": target, "method": method,
                    "labeler": labeler, "rows": entries,
                    "spread": {"prompts": len(entries), "mean_fd": float(np.mean(fds)) if fds else None,
                               "max_fd": max(fds) if fds else None,
                               "worst": max(entries, key=lambda e: e["fd"] if e["fd"] is not None else -1)["prompt"],
                               **{k: sum(bool(e[k]) for e in entries)
                                  for k in ("differs_holm", "differs_bh", "within_holm", "within_bh")}}})
    return out


def _below(p: float | None) -> bool | None:
    return None if p is None else p < ALPHA


def adjusted_verdict(off_target_p: float | None, tost_p: float | None) -> str:
    """The three-state verdict from adjusted p-values: off target where the off-target test
    rejects, on target where TOST does (the two never both do), else inconclusive."""
    if _below(off_target_p):
        return "off_target"
    if _below(tost_p):
        return "on_target"
    return "inconclusive"


def flat(groups: list[dict]) -> list[dict]:
    """The per-prompt table as flat records (one per group and prompt and class), for export."""
    records = []
    for g in groups:
        for e in g["rows"]:
            base = {"model": g["model"], "setting": g["setting"], "target_name": g["target"], "method": g["method"],
                    "labeler": g["labeler"], "prompt": e["prompt"], "cell_id": e["cell_id"], "n_valid": e["n_valid"],
                    "fd": e["fd"], "fd_lo": e["fd_lo"], "fd_hi": e["fd_hi"], "verdict": e["verdict"],
                    "chi2_p": e["chi2_p"], "chi2_p_holm": e["chi2_holm"], "chi2_p_bh": e["chi2_fdr_bh"],
                    "tost_p": e["tost_p"], "tost_p_holm": e["tost_holm"], "tost_p_bh": e["tost_fdr_bh"],
                    "off_target_p": e["off_target_p"], "off_target_p_holm": e["off_holm"],
                    "off_target_p_bh": e["off_fdr_bh"], "verdict_holm": e["verdict_holm"],
                    "verdict_bh": e["verdict_bh"],
                    "differs_holm": e["differs_holm"], "differs_bh": e["differs_bh"],
                    "within_tolerance_holm": e["within_holm"], "within_tolerance_bh": e["within_bh"]}
            for c in e["classes"] or [{}]:
                records.append({**base, "cls": c.get("cls"), "p": c.get("p"), "lo": c.get("lo"), "hi": c.get("hi"),
                                "target": c.get("target")})
    return records
