"""Consistency across the report's pages: one colour per method everywhere, the same FID judging
quality on the index and on each cell page, and the real diffaudit version."""

from __future__ import annotations

import html as htmllib
import itertools
import re
from pathlib import Path

import audit
from audit.report import plots

BUILT_IN = ["none", "prompt", "sample_guidance", "universal_guidance", "distribution_guidance"]


def test_built_in_methods_have_distinct_colour_blind_safe_colours():
    colours = plots.method_colours(BUILT_IN)
    assert list(colours) == BUILT_IN  # legend order: the built-ins in a fixed order
    assert len(set(colours.values())) == 5
    assert set(colours.values()) <= set(plots.OKABE_ITO.values())
    # the same method keeps its colour whatever else the run has, in whatever order
    for subset in (["none", "sample_guidance"], ["sample_guidance", "none", "my-method"],
                   list(reversed(BUILT_IN)) + ["zzz", "aaa"]):
        mapped = plots.method_colours(subset)
        assert all(mapped[m] == colours[m] for m in subset if m in colours)
    # the two methods that used to be two oranges
    assert colours["none"] != colours["sample_guidance"]
    # other names take the Okabe-Ito colours the built-ins leave unused, deterministically
    extra = plots.method_colours(["b-method", "a-method", "none"])
    assert extra == plots.method_colours(["none", "a-method", "b-method"])
    assert len(set(extra.values())) == 3 and extra["a-method"] not in colours.values()


def _rgb(hex_colour: str) -> tuple[int, ...]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def test_method_colours_are_far_apart():
    colours = plots.method_colours(BUILT_IN)
    for a, b in itertools.combinations(colours.values(), 2):
        assert sum((x - y) ** 2 for x, y in zip(_rgb(a), _rgb(b), strict=True)) ** 0.5 > 60, (a, b)


def _tradeoff_rows(html: str) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """Header names and, per row, (cell page href, swatch colour, cell texts)."""
    table = html.split('id="tradeoff-table"', 1)[1].split("</table>", 1)[0]
    head, body = table.split("</thead>", 1)
    names = [htmllib.unescape(re.sub(r"<[^>]+>.*?</span>|<[^>]+>", "", h).strip())
             for h in re.findall(r"<th[^>]*>(.*?)</th>", head)]
    rows = []
    for r in body.split("</tr>")[:-1]:
        href = re.search(r'<a href="(cells/[^"]+)"', r).group(1)
        colour = re.search(r'class="swatch" style="background: (#[0-9A-Fa-f]{6})"', r).group(1)
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        rows.append((href, colour, cells))
    return names, rows


def _quality(cell_html: str) -> list[tuple[str, str]]:
    """The cell page's FIDs in order: (label, value)."""
    found = re.findall(r'<dt id="(fid-[a-z]+)-label">([^<]+)</dt><dd id="\1"><span class="value">([^<]+)</span>',
                       cell_html)
    return [(htmllib.unescape(label), value) for _, label, value in found]


def test_cell_page_shows_the_index_quality_first(fixture_report):
    html = fixture_report.read_text()
    names, rows = _tradeoff_rows(html)
    assert len(rows) == 10
    judged = "FID to target"  # the fixture's cells all have one, so the index judges by it
    assert judged in names
    for href, _, cells in rows:
        cell_html = (fixture_report.parent / href).read_text()
        quality = _quality(cell_html)
        assert quality, href
        label, value = quality[0]
        assert label == judged
        assert value == cells[names.index(judged)].split()[0]
        assert quality[1] == ("FID to the suite's reference",
                              cells[names.index("FID to the suite's reference")].split()[0])
        assert "the FID the index's fairness-vs-quality chart and table judge this cell by" in cell_html


def test_cell_page_follows_the_index_without_fid_to_target(run_without_fid_target):
    """A run where no cell has an FID to target: both judge by the suite's FID, labelled FID."""
    from audit.report.html import write_report

    old = run_without_fid_target
    index = write_report(old)
    names, rows = _tradeoff_rows(index.read_text())
    assert "FID" in names and "FID to target" not in names
    for href, _, cells in rows:
        label, value = _quality((index.parent / href).read_text())[0]
        assert (label, value) == ("FID", cells[names.index("FID")].split()[0])


def test_same_method_same_colour_on_every_page(fixture_report):
    html = fixture_report.read_text()
    _, rows = _tradeoff_rows(html)
    colours = plots.method_colours(BUILT_IN)
    seen = {}
    for href, colour, cells in rows:
        method = cells[2]
        assert colours[method] == colour, (method, colour)
        seen.setdefault(method, set()).add(colour)
        cell_html = (fixture_report.parent / href).read_text()
        assert f'class="swatch" style="background: {colour}"' in cell_html.split("</h1>", 1)[0]
    assert all(len(c) == 1 for c in seen.values())
    assert len({c for cs in seen.values() for c in cs}) == len(seen) == 3
    cost = html.split('id="cost-table"', 1)[1].split("</table>", 1)[0]
    for method, (colour,) in seen.items():
        assert f'style="background: {colour}" aria-hidden="true"></span><a href="cells/' in cost
        links = re.findall(rf'background: {colour}" aria-hidden="true"></span><a href="[^"]+">(.*?)</a>', cost)
        assert {re.sub(r"<[^>]+>", "", link) for link in links} == {method}


def test_report_shows_the_real_diffaudit_version(fixture_report, parse_html):
    assert audit.__version__ and audit.__version__ != "0" and not audit.__version__.startswith("0+unknown")
    html = fixture_report.read_text()
    methodology = parse_html(html.split('id="methodology"', 1)[1].split("</section>", 1)[0]).visible
    assert "Measured with diffaudit 0.1.0 (from the cells' manifests)" in methodology  # the manifests say 0.1.0
    assert f"rendered by diffaudit {audit.__version__}." in methodology
    footer = html.split('<footer id="footer">', 1)[1].split("</footer>", 1)[0]
    assert f"diffaudit {audit.__version__}." in footer
    for page in [fixture_report, *sorted(Path(fixture_report.parent / "cells").glob("*.html"))[:2]]:
        text = page.read_text()
        assert f'<meta name="generator" content="diffaudit {audit.__version__}">' in text
        assert not re.search(r"diffaudit 0[^.0-9]", text)


def test_unrecorded_version_is_not_shown_as_zero(fixture_run, tmp_path):
    import json
    import shutil

    from audit.report.html import write_report

    old = tmp_path / "old"
    shutil.copytree(fixture_run, old, ignore=shutil.ignore_patterns("report"))
    for manifest in old.glob("cells/*/manifest.json"):
        data = json.loads(manifest.read_text())
        data["versions"]["diffaudit"] = "0"
        manifest.write_text(json.dumps(data))
    html = write_report(old).read_text()
    note = html.split('id="diffaudit-version">', 1)[1].split("</p>", 1)[0]
    assert "an unrecorded version of diffaudit" in note and "diffaudit 0 " not in note
