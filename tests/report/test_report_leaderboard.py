"""The leaderboard page across runs and suites (markup level; sorting in a browser: test_browser.py)."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pandas as pd
import pytest

from audit.report import ReportError
from audit.report.html import write_report
from audit.report.leaderboard import BETTER, write_leaderboard


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, make_run_dir):
    settings = [{"attributes": ["skin_tone"], "target": "uniform", "classes": None},
                {"attributes": ["eyeglasses"], "target": [0.3, 0.7], "classes": None}]
    methods = [{"name": "none", "label": None, "params": {}},
               {"name": "distribution_guidance", "label": "dg-s1", "params": {"scale": 1.0}},
               {"name": "distribution_guidance", "label": "dg-s4", "params": {"scale": 4.0}}]
    models = [{"name": "synthfaces-ddpm", "source": "zoo:synthfaces-ddpm", "text": False}]
    return make_run_dir(tmp_path_factory.mktemp("second") / "out", models=models, methods=methods, settings=settings,
                    samples=30, labelers=["synthfaces-eval"], name="sweep-suite", seed=3)


def tables(html: str) -> dict[str, str]:
    out = {}
    for chunk in html.split('<table class="sortable leaderboard"')[1:]:
        setting = re.match(r' data-setting="([^"]*)"', chunk).group(1)
        out[setting] = chunk.split("</table>")[0]
    return out


def test_leaderboard_groups_runs_per_setting(fixture_run, second_run, tmp_path, hostile, parse_html):
    write_report(second_run)
    dest = write_leaderboard([fixture_run, second_run, fixture_run], tmp_path / "lb" / "board.html")
    html = dest.read_text()
    groups = tables(html)
    # skin_tone/uniform holds both runs; the other settings one run each
    assert set(groups) == {"skin_tone", "skin_tone × eyeglasses", "eyeglasses"}
    first = pd.read_csv(fixture_run / "results.csv")
    second = pd.read_csv(second_run / "results.csv")
    expected = (first["attributes"] == "skin_tone").sum() + (second["attributes"] == "skin_tone").sum()
    assert groups["skin_tone"].count("<tr") - 1 == expected
    assert "target 0.3/0.7" in html
    assert "fixture-suite" in html and "sweep-suite" in html and "dg-s4" in html
    # every metric header carries its better direction, FD shows its interval
    for key, better in BETTER.items():
        assert f'data-key="{key}" data-better="{better}"' in html
    assert re.search(r"\d\.\d{3} <span class=\"ci\">\[\d\.\d{3}, \d\.\d{3}\]</span>", html)
    # default order: FD ascending within each table, missing (not applicable) last
    for table in groups.values():
        keys = re.findall(r'<td class="num" data-sort="([^"]*)">\d\.\d{3} <span class="ci">', table)
        values = [float(k) for k in keys]
        assert values == sorted(values)
    # links to each run's report when it exists, relative to the page
    links = re.findall(r'href="([^"]*report/index\.html)"', html)
    assert links and all((dest.parent / unquote(link)).resolve() == second_run / "report" / "index.html"
                         for link in links if "second" in link)
    assert any("second" in link for link in links)
    page = parse_html(html)
    assert hostile["model"] in page.visible and "onerror" not in "".join(str(a) for _, a in page.tags)


def test_leaderboard_default_destination_and_errors(fixture_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dest = write_leaderboard([fixture_run], tmp_path)
    assert dest == tmp_path / "leaderboard.html" and dest.is_file()
    with pytest.raises(ReportError, match="no such run directory"):
        write_leaderboard([fixture_run, tmp_path / "missing"], tmp_path / "x.html")
    with pytest.raises(ReportError, match="at least one"):
        write_leaderboard([], tmp_path / "x.html")
    with pytest.raises(ReportError, match="ending in .html"):
        write_leaderboard([fixture_run], tmp_path / "x.txt")
