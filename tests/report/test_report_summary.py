"""The executive summary: sentences written from a fixed results file (golden), the ranking's
confidence, and the summary at the top of a rendered report agreeing with its results.csv.

Regenerate the golden file after a deliberate wording change with
`DIFFAUDIT_UPDATE_GOLDEN=1 python -m pytest tests/report/test_report_summary.py` and review its diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from audit.report import summary

HERE = Path(__file__).parent
DATA = HERE / "data" / "quickstart-summary-input.json"  # the report's summary input for the quickstart run
GOLDEN = HERE / "golden" / "summary.txt"


def test_summary_matches_golden_file():
    text = summary.as_text(summary.findings(**json.loads(DATA.read_text())))
    if os.environ.get("DIFFAUDIT_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_golden_input_names_every_audited_setting_and_the_best_method():
    """The golden text is not just stable: each group's sentence names the method with the lowest FD."""
    data = json.loads(DATA.read_text())
    found = summary.findings(**data)
    rows = pd.DataFrame(data["rows"])
    done = rows[(rows.status == "done") & (rows.labeler == data["labeler"])]
    groups = [g for m in found for g in m["groups"]]
    assert len(groups) == done.groupby(["model", "setting", "prompt"], dropna=False).ngroups == 6
    for g in groups:
        members = done[(done.setting == g["setting"]) & (done.prompt.fillna("") == (g["prompt"] or ""))
                       & (done.model == next(m["model"] for m in found if g in m["groups"]))]
        lowest = members.fd.min()
        best = next(s for s in g["sentences"] if s.startswith("Best:"))
        winners = members[members.fd == lowest].method
        assert any(summary.method_words(w, data["methods"][w]) in best for w in winners), (best, list(winners))
        assert f"FD {lowest:.3f}" in best


def rows_for(*methods):
    out = []
    for name, fd, lo, hi, verdict in methods:
        out.append({"model": "m", "method": name, "setting": "skin_tone", "target": "uniform", "prompt": None,
                    "labeler": "eval", "status": "done", "n": 100, "n_valid": 100, "fd": fd, "fd_lo": lo,
                    "fd_hi": hi, "fd_floor": 0.05, "verdict": verdict, "samples_needed": None, "fid": 10.0,
                    "fid_target": None, "clip_score": None, "cell_id": name})
    return out


def test_ranking_says_whether_the_best_interval_clears_the_runner_up():
    methods = {"none": "none", "dg": "distribution_guidance", "sg": "sample_guidance"}
    clear = rows_for(("none", 0.5, 0.4, 0.6, "off_target"), ("dg", 0.06, 0.0, 0.1, "on_target"),
                     ("sg", 0.3, 0.2, 0.4, "off_target"))
    text = " ".join(summary.findings(clear, [], methods)[0]["groups"][0]["sentences"])
    assert "Best: dg" in text and "holds at this n" in text
    overlap = rows_for(("none", 0.5, 0.4, 0.6, "off_target"), ("dg", 0.06, 0.0, 0.25, "inconclusive"),
                       ("sg", 0.1, 0.0, 0.3, "inconclusive"))
    text = " ".join(summary.findings(overlap, [], methods)[0]["groups"][0]["sentences"])
    assert "Best: dg" in text and "overlaps that of sg" in text and "more samples are needed" in text
    worse = rows_for(("none", 0.05, 0.0, 0.1, "on_target"), ("dg", 0.2, 0.1, 0.3, "off_target"))
    text = " ".join(summary.findings(worse, [], methods)[0]["groups"][0]["sentences"])
    assert "No method reached a lower FD than no debiasing" in text


def test_unmeasured_rows_say_why():
    methods = {"none": "none", "dg": "distribution_guidance"}
    rows = rows_for(("none", None, None, None, None), ("dg", None, None, None, None))
    rows[0].update(n_valid=0, reason="no valid sample, nothing measured: no face detected: 64")
    rows[1].update(status="failed", reason="CUDA out of memory")
    text = " ".join(summary.findings(rows, [], methods)[0]["groups"][0]["sentences"])
    assert "nothing measured (no valid sample, nothing measured: no face detected: 64)" in text
    assert "Dg: failed: CUDA out of memory." in text
    assert "Best" not in text


def test_report_opens_with_the_summary(fixture_run, fixture_report, parse_html, hostile):
    html = fixture_report.read_text()
    sections = [a["id"] for a in parse_html(html).all("section")]
    assert sections[0] == "summary"
    section = html.split('id="summary"', 1)[1].split("</section>", 1)[0]
    text = parse_html(section).visible
    results = pd.read_csv(fixture_run / "results.csv")
    primary = results[(results.labeler == "synthfaces-eval") & (results.status == "done")]
    for model, rows in primary.groupby("model"):
        assert model in text
        assert f"off target in {rows[rows.method == 'none'].shape[0]} of" in text or "on target in" in text
    for fd in primary.fd:
        assert f"{fd:.3f}" in text
    assert hostile["prompt"] in text and hostile["model"] in text  # shown as text ...
    assert "<script" not in section and "<img" not in section  # ... never as markup
