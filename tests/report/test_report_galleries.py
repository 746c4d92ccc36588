"""Same-seed galleries: one page per model x setting (x prompt), rows = seeds, columns = methods,
each image the cell's own image for that seed with its labels; invalid images with their reason."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from PIL import Image


def gallery_pages(report_index: Path) -> list[Path]:
    return sorted((report_index.parent / "galleries").glob("*.html"))


def test_one_gallery_per_model_setting_and_prompt(fixture_run, fixture_report, parse_html):
    results = pd.read_csv(fixture_run / "results.csv")
    done = results[results.status == "done"]
    groups = done.groupby(["model", "attributes", "prompt"], dropna=False)
    pages = gallery_pages(fixture_report)
    assert len(pages) == groups.ngroups == 4
    index = parse_html(fixture_report.read_text())
    links = {a["href"] for a in index.all("a") if a.get("href", "").startswith("galleries/")}
    assert links == {f"galleries/{p.name}" for p in pages}
    for (model, attributes, _), members in groups:
        page = next(p for p in pages if attributes in p.name and p.name.startswith(model[:3]))
        html = page.read_text()
        heads = html.split("<thead>", 1)[1].split("</thead>", 1)[0]
        for method in members.drop_duplicates("cell_id").method:
            assert method in re.sub(r"<wbr>", "", heads)


def test_rows_show_each_methods_own_image_of_the_same_seed(fixture_run, fixture_report, parse_html):
    """Row `seed` holds, in each method's column, a copy of that method's cell image of the seed."""
    results = pd.read_csv(fixture_run / "results.csv")
    page = next(p for p in gallery_pages(fixture_report) if p.name.startswith("synthfaces-ddpm__skin_tone__"))
    parsed = parse_html(page.read_text())
    rows = [a for a in parsed.all("tr") if "data-seed" in a]
    assert len(rows) == 40
    figures = [a for a in parsed.all("figure")]
    cells = results[(results.model == "synthfaces-ddpm") & (results.attributes == "skin_tone")
                    & (results.status == "done")].drop_duplicates("cell_id")
    assert len(figures) == 40 * len(cells) == 80
    images = [a for a in parsed.all("img") if a.get("alt", "").startswith("seed ")]
    checked = 0
    for img in images:
        seed = int(img["alt"].split()[1].rstrip(","))
        method = img["alt"].split(", ", 1)[1]
        cell_id = cells[cells.method == method].cell_id.item()
        shown = Image.open((page.parent / img["src"]).resolve()).convert("RGB")
        original = Image.open(fixture_run / "cells" / cell_id / "images" / f"{seed:08d}.png").convert("RGB")
        assert shown.tobytes() == original.tobytes(), (seed, method)
        checked += 1
    assert checked == 80


def test_labels_invalid_reasons_and_filter_classes(fixture_run, fixture_report):
    page = next(p for p in gallery_pages(fixture_report) if p.name.startswith("synthfaces-ddpm__skin_tone__"))
    html = page.read_text()
    labels = pd.read_parquet(next((fixture_run / "cells").glob("synthfaces-ddpm__none__skin_tone__*"))
                             / "labels-synthfaces-eval.parquet")
    invalid = labels[~labels.valid]
    assert len(invalid) > 0
    figures = re.findall(r'<figure class="([^"]*)" data-seed="(\d+)" data-class="([^"]*)">', html)
    shown = {c for _, _, c in figures}
    assert {"light", "dark"} <= shown <= {"light", "dark", "invalid"}
    assert all(cls == "invalid" for klass, _, cls in figures if klass == "invalid")
    assert "(no face)" in html
    options = re.findall(r'<option value="([^"]*)">', html)
    assert options[:3] == ["", "light", "dark"] and "invalid" in options


def test_cell_page_links_its_gallery(fixture_report):
    cell = next((fixture_report.parent / "cells").glob("synthfaces-ddpm__none__skin_tone__*.html"))
    href = re.search(r'<a href="([^"]+)" id="same-seed-link"', cell.read_text()).group(1)
    assert (cell.parent / href).resolve().is_file()


def test_hostile_strings_in_galleries_stay_text(fixture_report, hostile):
    for page in gallery_pages(fixture_report):
        html = page.read_text()
        assert hostile["prompt"] not in html and "<img src=x" not in html
    t2i = [p for p in gallery_pages(fixture_report) if p.name.startswith("t2i")]
    assert t2i and all("&lt;script&gt;window.__xss=1&lt;/script&gt;" in p.read_text() for p in t2i)
