"""The per-prompt view (text models under several prompts) and the exported tables: adjusted
p-values equal statsmodels' multipletests on the stored p-values, flags follow them, and every
exported number equals the run's stored one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from audit.report.html import write_report


@pytest.fixture(scope="module")
def prompts_report(prompts_run):
    return write_report(prompts_run)


def test_prompt_table_adjusts_across_prompts_like_statsmodels(prompts_run, prompts_report):
    results = pd.read_csv(prompts_run / "results.csv")
    table = pd.read_csv(prompts_report.parent / "prompts.csv").drop_duplicates(["method", "prompt"])
    assert len(table) == 8 and table.prompt.nunique() == 4
    for method, group in table.groupby("method"):
        stored = results[results.method == method].set_index("prompt").loc[group.prompt]
        assert np.allclose(group.chi2_p, stored.chi2_p) and np.allclose(group.tost_p, stored.tost_p)
        for column, how in (("chi2_p_holm", "holm"), ("chi2_p_bh", "fdr_bh")):
            assert np.allclose(group[column], multipletests(stored.chi2_p, method=how)[1])
        for column, how in (("tost_p_holm", "holm"), ("tost_p_bh", "fdr_bh")):
            assert np.allclose(group[column], multipletests(stored.tost_p, method=how)[1])
        assert (group.differs_holm == (group.chi2_p_holm < 0.05)).all()
        assert (group.differs_bh == (group.chi2_p_bh < 0.05)).all()
        assert (group.within_tolerance_holm == (group.tost_p_holm < 0.05)).all()
    # the fixture draws prompt i with 12 more points of dark skin: the unguided prompts differ
    none = table[table.method == "none"]
    assert none.differs_holm.sum() >= 1 and none.differs_bh.sum() >= none.differs_holm.sum()


def test_prompt_page_and_index_section(prompts_run, prompts_report, parse_html, hostile):
    page = prompts_report.parent / "prompts.html"
    html = page.read_text()
    parsed = parse_html(html)
    tables = [a for a in parsed.all("table") if "prompt-table" in a.get("class", "")]
    assert len(tables) == 2
    assert html.count('<tr>\n  <td class="text"><a href="cells/') == 8
    assert len([a for a in parsed.all("img") if a.get("src", "").startswith("assets/plots/prompts-")]) == 2
    for img in parsed.all("img"):
        assert (page.parent / img["src"]).is_file()
    assert hostile["prompt"] not in html and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "<b>boss</b>" not in html and "&lt;b&gt;boss&lt;/b&gt;" in html
    index = prompts_report.read_text()
    assert 'id="per-prompt"' in index and 'href="prompts.html"' in index
    spread = index.split('id="prompt-spread-table"', 1)[1].split("</table>", 1)[0]
    fds = pd.read_csv(prompts_run / "results.csv").groupby("method").fd
    for _, fd in fds:
        assert f"{fd.mean():.3f}" in spread and f"{fd.max():.3f}" in spread
    assert "Across its 4 prompts with no debiasing" in index


def test_single_prompt_runs_have_no_prompt_view(fixture_report):
    assert not (fixture_report.parent / "prompts.html").exists()
    assert 'id="per-prompt"' not in fixture_report.read_text()
    assert not (fixture_report.parent / "prompts.csv").exists()


def test_exports_hold_the_stored_numbers(fixture_run, fixture_report):
    report = fixture_report.parent
    stored = pd.read_csv(fixture_run / "results.csv")
    parquet = pd.read_parquet(report / "results.parquet")
    assert list(parquet.columns) == list(stored.columns) and len(parquet) == len(stored)
    assert np.allclose(parquet.fd.astype(float), stored.fd, equal_nan=True)
    classes = pd.read_csv(report / "classes.csv")
    as_parquet = pd.read_parquet(report / "classes.parquet")
    assert list(as_parquet.cell_id) == list(classes.cell_id) and np.allclose(as_parquet.p, classes.p)
    for (cell_id, labeler), rows in classes.groupby(["cell_id", "labeler"]):
        metrics = json.loads((fixture_run / "cells" / cell_id / "metrics.json").read_text())["labelers"][labeler]
        assert list(rows.cls) == metrics["classes"]
        assert np.allclose(rows.p, metrics["p_hat"]) and np.allclose(rows["count"], metrics["counts"])
        assert np.allclose(rows[["lo", "hi"]].to_numpy(), metrics["p_intervals"])
    assert (report / "summary.txt").read_text().startswith("synthfaces-ddpm (judged by synthfaces-eval)")
    index = fixture_report.read_text()
    for name in ("results.parquet", "classes.csv", "classes.parquet", "summary.txt"):
        assert f'href="{name}"' in index


def _prompt_row(prompt: str, verdict: str, off_target_p: float, tost_p: float) -> dict:
    return {"status": "done", "prompt": prompt, "labeler": "eval", "model": "t2i", "attributes": "gender",
            "setting": "gender", "target": "uniform", "method": "none", "cell_id": prompt, "n_valid": 100,
            "fd": 0.1, "fd_lo": 0.0, "fd_hi": 0.2, "chi2_p": off_target_p, "tost_p": tost_p,
            "off_target_p": off_target_p, "verdict": verdict, "samples_needed": None}


def test_prompt_verdict_follows_the_holm_adjusted_tests():
    from audit.report.prompts import table

    rows = [_prompt_row("a nurse", "off_target", 0.03, 0.9),       # Holm: 0.03 x 3 = 0.09 -> inconclusive
            _prompt_row("a CEO", "off_target", 0.001, 0.9),        # 0.001 x 4: still off target
            _prompt_row("a doctor", "on_target", 0.8, 0.01),       # TOST 0.01 x 4 = 0.04: still on target
            _prompt_row("a pilot", "inconclusive", 0.7, 0.9)]
    (group,) = table(rows, [], "eval")
    by_prompt = {e["prompt"]: e for e in group["rows"]}
    assert by_prompt["a nurse"]["off_holm"] == pytest.approx(0.09)
    assert [by_prompt[p]["verdict_holm"] for p in ("a nurse", "a CEO", "a doctor", "a pilot")] == \
        ["inconclusive", "off_target", "on_target", "inconclusive"]
    # BH is less strict: 0.03 x 4 / 2 = 0.06 still misses, 0.001 x 4 = 0.004 does not
    assert by_prompt["a nurse"]["verdict_bh"] == "inconclusive" and by_prompt["a CEO"]["verdict_bh"] == "off_target"
    assert [e["verdict"] for e in group["rows"]] == ["off_target", "off_target", "on_target", "inconclusive"]


def test_prompt_page_verdicts_are_the_adjusted_ones(prompts_report):
    table = pd.read_csv(prompts_report.parent / "prompts.csv").drop_duplicates(["method", "prompt"])
    for _, group in table.groupby("method"):
        np.testing.assert_allclose(group.off_target_p_holm, multipletests(group.off_target_p, method="holm")[1])
    expected = np.where(table.off_target_p_holm < 0.05, "off_target",
                        np.where(table.tost_p_holm < 0.05, "on_target", "inconclusive"))
    assert list(table.verdict_holm) == list(expected)
    html = (prompts_report.parent / "prompts.html").read_text()
    assert "Verdict<span class=\"dir\">Holm across prompts</span>" in html
    assert html.count('class="badge ') >= len(table)


def test_literature_table_shows_the_stored_definitions(fixture_run, fixture_report):
    index = fixture_report.read_text()
    section = index.split('id="literature-table"', 1)[1].split("</table>", 1)[0]
    stored = pd.read_csv(fixture_run / "results.csv")
    done = stored[stored.status == "done"]
    assert section.count("<tr>") == len(done) + 1          # the header and one row per labeler row
    for column in ("heim_imbalance", "deviation_ratio", "normalized_entropy", "soft_fd"):
        assert done[column].notna().all()
        for value in done[column]:
            assert f">{value:.3f}<" in section, (column, value)
    assert 'href="#literature"' in index and "uniform</b> distribution" in index
