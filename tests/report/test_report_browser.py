"""The report and the leaderboard in a real browser (Debian's headless Chromium driven by
Playwright): no console errors, no network, every image loads, hostile strings stay text,
sorting follows each column's better direction, pages render quickly. Screenshots are saved in
each test's tmp dir.

Needs `apt-get install chromium` and `pip install playwright` (never `playwright install`)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from audit.report.html import write_report
from audit.report.leaderboard import write_leaderboard

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the playwright package is not installed (pip install playwright)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


class Visit:
    """A page with everything it did recorded: console errors, page errors, every request."""

    def __init__(self, browser, width: int = 1400, height: int = 1000):
        self.context = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("websocket", lambda ws: self.requests.append(ws.url))

    def open(self, path: Path) -> float:
        """Load a file:// page; returns the load event time in ms (navigation timing)."""
        self.page.goto(path.resolve().as_uri(), wait_until="load")
        return self.page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd")

    def check(self) -> None:
        """No errors, no network, every image decoded, no injected script ran."""
        assert not self.errors, self.errors
        remote = [u for u in self.requests if not u.startswith(("file://", "data:"))]
        assert not remote, remote
        broken = self.page.evaluate(
            "() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        assert not broken, broken
        assert self.page.evaluate("() => typeof window.__xss") == "undefined"

    def column(self, table: str, index: int) -> list[str]:
        return self.page.evaluate(
            "([t, i]) => [...document.querySelectorAll(t + ' tbody tr')].map(r => r.cells[i].dataset.sort ?? "
            "r.cells[i].textContent.trim())", [table, index])

    def close(self):
        self.context.close()


def header_index(visit: Visit, table: str, text: str) -> int:
    headers = visit.page.evaluate(f"() => [...document.querySelectorAll('{table} thead th')].map(h => h.textContent)")
    return next(i for i, h in enumerate(headers) if h.strip().startswith(text))


def numbers(keys: list[str]) -> list[float | None]:
    return [float(k) if k != "" else None for k in keys]


def assert_sorted(values: list[float | None], descending: bool) -> None:
    present = [v for v in values if v is not None]
    assert present == sorted(present, reverse=descending)
    assert all(v is None for v in values[len(present):]), "missing values must sort last"


def test_report_pages_in_browser(browser, fixture_run, fixture_report, hostile, tmp_path):
    visit = Visit(browser)
    try:
        load_ms = visit.open(fixture_report)
        visit.check()
        assert load_ms < 2000
        rows = visit.page.locator("#verdict-table tbody tr")
        assert rows.count() == 22
        assert visit.page.locator("#cost-table tbody tr").count() == 10
        assert visit.page.locator("#tradeoff-table tbody tr").count() == 10
        text = visit.page.inner_text("body")
        for s in hostile.values():
            assert s in text
        visit.page.screenshot(path=str(tmp_path / "report-index.png"))
        visit.page.screenshot(path=str(tmp_path / "report-index-full.png"), full_page=True)
        cell_pages = sorted((fixture_report.parent / "cells").glob("*.html"))
        assert len(cell_pages) == 10
        for cell_page in cell_pages:
            assert visit.open(cell_page) < 2000
            visit.check()
            assert visit.page.locator(".gallery figure").count() == 40
        # drill down: a thumbnail opens the full image with every probability (text model page: the prompt)
        t2i = next(p for p in cell_pages if p.name.startswith("t2i"))
        visit.open(t2i)
        visit.page.locator(".gallery a.thumb").nth(3).click()
        dialog = visit.page.locator("dialog#lightbox")
        assert dialog.evaluate("d => d.open")
        visit.page.wait_for_function("() => document.querySelector('dialog#lightbox img').naturalWidth > 0")
        detail = dialog.inner_text()
        assert "seed 3" in detail and hostile["prompt"] in detail and "p:" not in detail
        visit.page.screenshot(path=str(tmp_path / "report-lightbox.png"))
        visit.page.keyboard.press("Escape")
        assert not dialog.evaluate("d => d.open")
        visit.check()
    finally:
        visit.close()


def test_report_table_sorting(browser, fixture_report):
    visit = Visit(browser)
    try:
        visit.open(fixture_report)
        fd = header_index(visit, "#verdict-table", "FD")
        before = visit.column("#verdict-table", fd)
        visit.page.locator("#verdict-table thead th").nth(fd).click()
        ascending = numbers(visit.column("#verdict-table", fd))
        assert_sorted(ascending, descending=False)
        assert visit.column("#verdict-table", fd) != before
        visit.page.locator("#verdict-table thead th").nth(fd).click()
        assert_sorted(numbers(visit.column("#verdict-table", fd)), descending=True)
        assert visit.page.locator("#verdict-table thead th").nth(fd).get_attribute("aria-sort") == "descending"
        visit.check()
    finally:
        visit.close()


@pytest.fixture(scope="module")
def leaderboard_page(fixture_run, tmp_path_factory, make_run_dir):
    root = tmp_path_factory.mktemp("board")
    methods = [{"name": "none", "label": None, "params": {}},
               {"name": "distribution_guidance", "label": "dg-s1", "params": {"scale": 1.0}},
               {"name": "distribution_guidance", "label": "dg-s4", "params": {"scale": 4.0}}]
    other = make_run_dir(root / "other", methods=methods, samples=30, name="sweep-suite", seed=7)
    write_report(other)
    return write_leaderboard([fixture_run, other], root / "leaderboard.html")


@pytest.mark.parametrize("header, descending", [("χ² p", True), ("Images/s", True), ("Seconds", False),
                                                ("KL", False), ("FID", False)])
def test_leaderboard_sorting_follows_better_direction(browser, leaderboard_page, header, descending, tmp_path):
    visit = Visit(browser)
    try:
        load_ms = visit.open(leaderboard_page)
        visit.check()
        assert load_ms < 2000
        table = "table.leaderboard"
        first_table = visit.page.locator(table).first
        index = header_index(visit, table, header)
        first_table.locator("thead th").nth(header_index(visit, table, "Model")).click()  # another order first
        before = visit.column(table, index)[: first_table.locator("tbody tr").count()]
        first_table.locator("thead th").nth(index).click()
        after = visit.column(table, index)[: len(before)]
        assert after != before, "clicking the header must reorder the rows"
        assert_sorted(numbers(after), descending=descending)
        assert first_table.locator("thead th").nth(index).get_attribute("aria-sort") == \
            ("descending" if descending else "ascending")
        assert sorted(after) == sorted(before)
        ranks = first_table.locator("td.rank").all_inner_texts()
        assert ranks[0] == "1" and ranks[1] == "2"
        first_table.locator("thead th").nth(index).click()  # the second click reverses
        assert_sorted(numbers(visit.column(table, index)[: len(before)]), descending=not descending)
        if header == "χ² p":
            first_table.locator("thead th").nth(index).click()
            visit.page.screenshot(path=str(tmp_path / "leaderboard.png"))
        visit.check()
    finally:
        visit.close()


def test_large_report_renders_quickly(browser, large_run, tmp_path):
    index = large_run / "report" / "index.html"
    if not index.exists():
        write_report(large_run)
    visit = Visit(browser)
    try:
        timings = {"index": visit.open(index)}
        visit.check()
        cell_page = sorted((index.parent / "cells").glob("*.html"))[0]
        timings["cell"] = visit.open(cell_page)
        visit.check()
        assert visit.page.locator(".gallery figure").count() == 48
        visit.page.screenshot(path=str(tmp_path / "large-cell.png"))
        print(f"\nload event: index {timings['index']:.0f} ms, cell page {timings['cell']:.0f} ms")
        assert max(timings.values()) < 2000
        assert re.search(r"48 of 1000 images", visit.page.inner_text("#gallery"))
    finally:
        visit.close()


def test_content_security_policy_blocks_injected_script(browser, fixture_report, tmp_path):
    """Second line of defence: had escaping failed, the page's CSP (only our script's hash may
    run) would still refuse an injected inline script or event handler."""
    html = fixture_report.read_text()
    injected = html.replace("</main>", '<script>window.__xss=8</script><img src="missing.png" '
                                       'onerror="window.__xss=9"></main>', 1)
    page_path = fixture_report.parent / "csp-probe.html"
    page_path.write_text(injected)
    visit = Visit(browser)
    try:
        visit.open(page_path)
        visit.page.wait_for_timeout(100)
        assert visit.page.evaluate("() => typeof window.__xss") == "undefined"
        assert any("Content Security Policy" in e for e in visit.errors), visit.errors
        # the page's own script still runs: it made the sortable headers focusable
        assert visit.page.evaluate("() => document.querySelector('th[data-better]').tabIndex") == 0
    finally:
        visit.close()
        page_path.unlink()


@pytest.mark.parametrize("width", [1280, 1920])
def test_main_tables_need_no_horizontal_scrollbar(browser, fixture_report, width, tmp_path):
    """Every column of the verdict, trade-off and cost tables is visible at common desktop widths:
    long names and prompts wrap, per-class error-aware detail lives on the cell page."""
    visit = Visit(browser, width=width)
    try:
        visit.open(fixture_report)
        visit.check()
        sizes = visit.page.evaluate(
            "() => ['verdict-table', 'tradeoff-table', 'cost-table'].map(id => {"
            "  const t = document.getElementById(id);"
            "  return [id, t.scrollWidth, t.parentElement.clientWidth, t.parentElement.scrollWidth]; })")
        for table, width_of_table, container, container_scroll in sizes:
            assert width_of_table <= container, (table, width_of_table, container)
            assert container_scroll <= container, (table, container_scroll, container)
        assert visit.page.evaluate("() => document.documentElement.scrollWidth") <= width
        # nothing hidden: the last column of each table is inside the viewport
        for table in ("#verdict-table", "#tradeoff-table", "#cost-table"):
            right = visit.page.evaluate(
                f"() => [...document.querySelectorAll('{table} thead th')].pop().getBoundingClientRect().right")
            assert right <= width, (table, right)
        visit.page.screenshot(path=str(tmp_path / f"report-{width}.png"))
    finally:
        visit.close()


@pytest.fixture(scope="module")
def prompts_report_page(prompts_run):
    index = prompts_run / "report" / "index.html"
    return index if index.exists() else write_report(prompts_run)


@pytest.mark.parametrize("width", [1280, 1920])
def test_summary_prompt_and_gallery_tables_fit(browser, fixture_report, prompts_report_page, width, tmp_path):
    """The summary, the per-prompt tables and a same-seed gallery need no horizontal scrollbar."""
    pages = [(prompts_report_page, ["prompt-spread-table", "verdict-table"]),
             (prompts_report_page.parent / "prompts.html", ["prompt-table-1", "prompt-table-2"]),
             (sorted((fixture_report.parent / "galleries").glob("synthfaces-ddpm__skin_tonex*.html"))[0],
              ["seed-table"])]
    visit = Visit(browser, width=width)
    try:
        for path, tables in pages:
            visit.open(path)
            visit.check()
            for table in tables:
                size = visit.page.evaluate(
                    "id => { const t = document.getElementById(id);"
                    " return [t.scrollWidth, t.parentElement.clientWidth, t.parentElement.scrollWidth]; }", table)
                assert size[0] <= size[1] and size[2] <= size[1], (path.name, table, size)
            assert visit.page.evaluate("() => document.documentElement.scrollWidth") <= width, path.name
            visit.page.screenshot(path=str(tmp_path / f"{path.stem}-{width}.png"))
    finally:
        visit.close()


def test_gallery_filter_keeps_the_rows_with_the_class(browser, fixture_report, tmp_path):
    page = sorted((fixture_report.parent / "galleries").glob("synthfaces-ddpm__skin_tone__*.html"))[0]
    visit = Visit(browser)
    try:
        visit.open(page)
        visit.check()
        rows = visit.page.locator("#seed-table tbody tr")
        total = rows.count()
        # every row: the same seed in every method's column
        seeds = visit.page.evaluate("() => [...document.querySelectorAll('#seed-table tbody tr')].map(r =>"
                                    " [r.dataset.seed, ...[...r.querySelectorAll('figure')].map(f => f.dataset.seed)])")
        assert all(len(set(s)) == 1 and len(s) == 3 for s in seeds)
        expected = visit.page.evaluate("() => [...document.querySelectorAll('#seed-table tbody tr')].filter(r =>"
                                       " r.querySelector('figure[data-class=\"dark\"]')).length")
        assert 0 < expected < total
        visit.page.select_option("#class-filter", "dark")
        visible = visit.page.locator("#seed-table tbody tr:visible")
        assert visible.count() == expected
        assert all(visible.nth(i).locator('figure[data-class="dark"]').count() > 0 for i in range(expected))
        assert f"{expected} seeds shown" in visit.page.inner_text("#filter-count")
        visit.page.screenshot(path=str(tmp_path / "gallery-dark.png"), full_page=True)
        visit.page.select_option("#class-filter", "")
        assert visit.page.locator("#seed-table tbody tr:visible").count() == total
        visit.check()
    finally:
        visit.close()


def test_pdf_export(fixture_run, tmp_path):
    """`diffaudit report OUT --pdf` prints the index to OUT/report.pdf: its first page renders (not
    blank) and its text opens with the executive summary and carries the methodology."""
    import shutil
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    out = tmp_path / "out"
    shutil.copytree(fixture_run, out, ignore=shutil.ignore_patterns("report"))
    # the real command in its own process (this module's browser fixture holds playwright's loop)
    result = subprocess.run([sys.executable, "-m", "audit.cli", "report", str(out), "--pdf"], capture_output=True,
                            text=True, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    pdf = out / "report.pdf"
    assert f"pdf: {pdf}" in result.stdout and pdf.read_bytes()[:5] == b"%PDF-"
    subprocess.run(["pdftoppm", "-f", "1", "-l", "1", "-r", "50", "-png", str(pdf), str(tmp_path / "page")],
                   check=True)
    pixels = np.asarray(Image.open(next(tmp_path.glob("page*.png"))).convert("L"))
    assert (pixels < 128).mean() > 0.01 and pixels.std() > 20  # text on the page, not a blank sheet
    text = " ".join(subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                                   check=True).stdout.split())
    headline = (out / "report" / "summary.txt").read_text().splitlines()[1].strip()
    assert "Summary" in text and " ".join(headline.split()[:12]) in text
    assert text.index("Summary") < text.index("Verdicts")
    for fact in ("Metric definitions", "not validated", "0123abcd", "DDIMScheduler", "synthfaces-pseudo", "2.13.0"):
        assert fact in text, fact
