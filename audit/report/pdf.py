"""The report as a print-ready PDF: Chromium (driven by playwright) prints the rendered index page
with the report's print stylesheet, A4 landscape, page numbers in the footer.

Chromium is the one installed on the machine (DIFFAUDIT_CHROMIUM, else `chromium`,
`chromium-browser` or `google-chrome` on PATH), else the one `playwright install chromium` put in
playwright's cache; nothing is downloaded here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from audit.report.load import ReportError

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
FOOTER = ('<div style="font-size:8px;width:100%;text-align:center;color:#5b6576">'
          '<span class="pageNumber"></span> / <span class="totalPages"></span></div>')


def chromium() -> str | None:
    """The Chromium to drive: $DIFFAUDIT_CHROMIUM, one on PATH, or None (playwright's own)."""
    named = os.environ.get("DIFFAUDIT_CHROMIUM")
    if named:
        if not Path(named).is_file():
            raise ReportError(f"DIFFAUDIT_CHROMIUM={named}: no such file; point it at a Chromium executable")
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_pdf(index: Path, pdf: Path) -> Path:
    """Print `index` (a rendered report page) to `pdf`, written atomically; returns pdf."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        raise ReportError("--pdf needs playwright (pip install playwright) and a Chromium "
                          "(apt-get install chromium, or playwright install chromium)") from None
    executable = chromium()
    tmp = pdf.with_name(f".{pdf.name}.{os.getpid()}.tmp")
    try:
        with sync_playwright() as p:
            try:
                browser = p.chromium.launch(executable_path=executable, args=ARGS)
            except Error as e:
                raise ReportError(f"--pdf: cannot start Chromium ({str(e).strip().splitlines()[0]}); install it "
                                  "(apt-get install chromium) or set DIFFAUDIT_CHROMIUM to its path") from None
            try:
                page = browser.new_page()
                page.goto(index.resolve().as_uri(), wait_until="load")
                page.emulate_media(media="print")
                page.pdf(path=str(tmp), format="A4", landscape=True, print_background=True,
                         display_header_footer=True, header_template="<span></span>", footer_template=FOOTER,
                         margin={"top": "12mm", "bottom": "14mm", "left": "10mm", "right": "10mm"})
            finally:
                browser.close()
        os.replace(tmp, pdf)
    finally:
        tmp.unlink(missing_ok=True)
    return pdf
