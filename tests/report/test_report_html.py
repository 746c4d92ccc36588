"""The HTML report on fabricated run directories: structure, escaping, missing values, tolerance
override, thumbnails, gallery cap, path safety and one-line errors (no browser needed)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from audit.report import ReportError
from audit.report.html import GALLERY_MAX, aim_label, write_report


def table_rows(html: str, table_id: str) -> int:
    body = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    return body.count("<tr")


def local_files(page_path: Path, page) -> list[Path]:
    refs = [a["src"] for a in page.all("img")] + [a["href"] for a in page.all("a") if "href" in a]
    return [(page_path.parent / r).resolve() for r in refs if not r.startswith("#") and ":" not in r.split("/")[0]]


def test_report_structure(fixture_run, fixture_report, parse_html):
    report = fixture_report.parent
    html = fixture_report.read_text()
    page = parse_html(html)
    results = pd.read_csv(fixture_run / "results.csv")
    assert table_rows(html, "verdict-table") == len(results) == 22  # 10 cells x 2 labelers + 2 not applicable
    assert table_rows(html, "cost-table") == table_rows(html, "tradeoff-table") == 10
    for section in ("summary", "verdicts", "tradeoff", "cost", "galleries", "cells", "methodology", "downloads"):
        assert f'id="{section}"' in html
    assert len(list((report / "cells").glob("*.html"))) == 10
    for name in ("results.csv", "results.json", "suite.json"):
        assert (report / name).read_bytes() == (fixture_run / name).read_bytes()
        assert any(a.get("href") == name for a in page.all("a"))
    assert (report / "assets" / "plots" / "tradeoff.png").is_file()
    # the aim column: only the joint distribution-guidance cells (one per model) steered off the target
    tradeoff = html.split('id="tradeoff-table"', 1)[1].split("</table>", 1)[0]
    assert ">Aim</th>" in tradeoff
    assert tradeoff.count("<td class=\"text\">0.280/0.240/0.200/0.280</td>") == 2
    # verdicts: badges for every measured row, not-applicable rows say why
    assert sum(html.count(f'class="badge {state}"') for state in ("pass", "fail", "inconclusive")) == 20
    verdict_table = html.split('id="verdict-table"', 1)[1].split("</table>", 1)[0]
    assert verdict_table.count("prompt debiasing needs a text-conditioned model") == 2
    # methodology from the manifests: revision, sampler, seeds rule, which labeler trained the probes, versions
    text = page.visible
    for fact in ("0123abcd", "DDIMScheduler", "timestep_spacing=trailing", "image i uses seed first+i",
                 "synthfaces-pseudo", "fixture labeler synthfaces-eval", "2.13.0"):
        assert fact in text, fact
    # every local link and image of the index exists
    for path in local_files(fixture_report, page):
        assert path.exists(), path


def tradeoff_columns(html: str) -> tuple[list[str], list[list[str]]]:
    """The trade-off table's header names and its rows' cell texts."""
    table = html.split('id="tradeoff-table"', 1)[1].split("</table>", 1)[0]
    head, body = table.split("</thead>", 1)
    names = [re.sub(r"<[^>]+>.*?</span>|<[^>]+>", "", h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", head)]
    rows = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
            for r in body.split("</tr>")[:-1]]
    return names, rows


def test_tradeoff_judges_quality_against_the_target_reference(fixture_run, fixture_report,
                                                              run_without_fid_target):
    """Balance raises FID against the model's own (biased) reference, so the chart and table judge
    quality by FID against a reference drawn with the target's distribution where every cell has
    one, and fall back to the suite's reference (labelled so) where a run predates it."""
    names, rows = tradeoff_columns(fixture_report.read_text())
    assert names.count("FID to target") == 1 and "FID to the suite's reference" in names
    results = pd.read_json(fixture_run / "results.json")
    by_cell = results.drop_duplicates("cell_id").set_index("cell_id")
    shown = sorted(float(r[names.index("FID to target")].split()[0]) for r in rows)
    assert shown == sorted(round(v, 2) for v in by_cell["fid_target"].dropna())
    assert "FID to target (against reference images drawn with the target" in fixture_report.read_text()

    names, rows = tradeoff_columns(write_report(run_without_fid_target).read_text())
    assert "FID to target" not in names and "FID" in names
    assert len(rows) == 10


def test_aim_label():
    assert aim_label({"target": [0.5, 0.5], "aim": [0.5002, 0.4998]}) is None  # the target itself
    assert aim_label({"target": [0.5, 0.5]}) is None  # records made before aims existed
    assert aim_label({"target": [0.5, 0.5], "aim": [0.53, 0.47]}) == "0.530/0.470"
    assert aim_label({"aim": [0.25, 0.75]}) == "0.250/0.750"


def test_cell_pages(fixture_report, parse_html):
    report = fixture_report.parent
    for cell_page in (report / "cells").glob("*.html"):
        html = cell_page.read_text()
        page = parse_html(html)
        images = [a["src"] for a in page.all("img")]
        assert any("-distribution.png" in s for s in images)
        joint = "skin_tone × eyeglasses</h1>" in html
        assert any("-joint.png" in s for s in images) == joint
        thumbs = [s for s in images if "/thumbs/" in s]
        assert len(thumbs) == 40
        for path in local_files(cell_page, page):
            assert path.exists(), path
        assert 'id="invalid-table"' in html and "no face" in html
        assert 'id="agreement-table"' in html  # two labelers: Cohen's kappa per attribute
        assert "confidence" in page.visible


def test_hostile_strings_are_escaped(fixture_report, hostile, parse_html):
    pages = [fixture_report, *(fixture_report.parent / "cells").glob("*.html")]
    seen = {s: False for s in hostile.values()}
    for path in pages:
        html = path.read_text()
        page = parse_html(html)
        # no markup from the run survives: one script (ours), images only from our assets
        assert len(page.all("script")) == 1
        assert not any("onerror" in a for _, a in page.tags)
        assert all(a.get("src", "x").startswith(("../assets/", "assets/")) for a in page.all("img"))
        assert "window.__xss" not in html.split("<script>")[-1]  # only escaped text before our script
        for s in seen:
            seen[s] |= s in page.visible
    assert all(seen.values()), seen


def test_missing_values_render_as_dash(tmp_path, make_run_dir):
    out = make_run_dir(tmp_path / "out", samples=12, with_fid=False)
    frame = pd.read_csv(out / "results.csv")
    frame.loc[0, ["fd", "fd_lo", "fd_hi", "kl", "chi2_p"]] = float("nan")
    frame.to_csv(out / "results.csv", index=False)
    (out / "results.json").unlink()  # the CSV path is read when there is no JSON
    html = write_report(out).read_text()
    first_row = html.split('id="verdict-table"')[1].split("<tbody>")[1].split("</tr>")[0]
    assert first_row.count("—") >= 4 and "nan" not in first_row.lower()
    assert "no FID measured" in html or "No cell has an FID" in html


def test_tolerance_override(fixture_run, tmp_path, parse_html):
    out = tmp_path / "out"
    shutil.copytree(fixture_run, out, ignore=shutil.ignore_patterns("report"))
    strict = write_report(out, tolerance=0.001).read_text()
    assert 'class="badge pass"' not in strict
    # no class can be shown within 0.001 of its target, nor (at these n) shown beyond it everywhere:
    # such verdicts are inconclusive and say how many samples would decide them
    assert 'class="badge inconclusive"' in strict and "needs &asymp;" in strict
    loose = write_report(out, tolerance=0.6).read_text()
    assert loose.count('class="badge pass"') == 20 and 'class="badge fail"' not in loose
    assert "set for this report; the suite says 0.050" in parse_html(loose).visible
    with pytest.raises(ReportError, match="between 0 and 1"):
        write_report(out, tolerance=1.5)


def test_thumbnails_gallery_cap_and_determinism(tmp_path, make_run_dir):
    settings = [{"attributes": ["skin_tone"], "target": [0.5, 0.5], "classes": None}]
    methods = [{"name": "none", "label": None, "params": {}}]
    models = [{"name": "big-ddpm", "source": "zoo:synthfaces-ddpm", "text": False}]
    out = make_run_dir(tmp_path / "out", models=models, methods=methods, settings=settings, samples=120,
                   labelers=["synthfaces-eval"], image_size=160)
    first = write_report(out)
    thumbs = sorted((first.parent / "assets" / "thumbs").rglob("*.*"))
    assert len(thumbs) == GALLERY_MAX
    for t in thumbs[:3]:
        with Image.open(t) as image:
            assert max(image.size) <= 96 and t.suffix == ".jpg"
    cell_page = next((first.parent / "cells").glob("*.html"))
    html = cell_page.read_text()
    # full-size images link back to the run directory (originals are not copied)
    assert "../../cells/" in html and "48 of 120 images" in html
    seeds = re.findall(r'data-seed="(\d+)"', html)
    assert seeds[0] == "0" and seeds[-1] == "119" and len(set(seeds)) == GALLERY_MAX
    second = write_report(out)
    assert re.findall(r'data-seed="(\d+)"', next((second.parent / "cells").glob("*.html")).read_text()) == seeds


def test_rerender_replaces_the_folder(fixture_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fixture_run, out, ignore=shutil.ignore_patterns("report"))
    write_report(out)
    stale = out / "report" / "assets" / "stale.png"
    stale.write_bytes(b"x")
    write_report(out)
    assert not stale.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".report")]


def test_unsafe_cell_ids_and_broken_cells(tmp_path, make_run_dir):
    out = make_run_dir(tmp_path / "out", samples=8)
    rows = json.loads((out / "results.json").read_text())
    cells = list(dict.fromkeys(r["cell_id"] for r in rows if r["status"] == "done"))
    outside = tmp_path / "secret"
    shutil.copytree(out / "cells" / cells[0], outside)
    metrics = json.loads((outside / "metrics.json").read_text())
    for m in metrics["labelers"].values():
        m["invalid_reasons"] = {"SECRET-MARKER": 1}
    (outside / "metrics.json").write_text(json.dumps(metrics))
    renamed = {cells[0]: "../../secret", cells[1]: "/etc"}
    for r in rows:
        r["cell_id"] = renamed.get(r["cell_id"], r["cell_id"])
    (out / "results.json").write_text(json.dumps(rows))
    broken = out / "cells" / cells[2]
    (broken / "metrics.json").write_text("{not json")
    for labels in broken.glob("labels-*.parquet"):
        labels.write_bytes(b"PAR1 torn")
    index = write_report(out)
    pages = {p.name: p.read_text() for p in (index.parent / "cells").glob("*.html")}
    assert len(pages) == 10
    assert not any("SECRET-MARKER" in html for html in pages.values())
    assert sum("not a safe path" in html for html in pages.values()) == 2
    assert sum("metrics.json is unreadable" in html for html in pages.values()) == 1
    assert table_rows(index.read_text(), "verdict-table") == len(rows)
    assert not list((index.parent / "assets" / "thumbs").glob("*secret*"))


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "no such run directory"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "not a directory"),
    (lambda p: p, "no results.json or results.csv"),
    (lambda p: (p / "results.json").write_text("{oops") and p, "cannot read results"),
    (lambda p: (p / "results.json").write_text("[]") and p, "hold no rows"),
])
def test_invalid_run_directory_is_one_line_error(tmp_path, make, message):
    with pytest.raises(ReportError, match=message) as e:
        write_report(make(tmp_path))
    assert "\n" not in str(e.value)
