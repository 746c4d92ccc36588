"""Publish a run's HTML report into the repository, with a screenshot for the README.

    diffaudit run benchmarks/quickstart.yaml
    diffaudit report runs/quickstart --pdf
    python benchmarks/publish_report.py runs/quickstart reports/quickstart

Copies OUT/report/ (self-contained: thumbnails, CSS, scripts, the exported tables) to DEST/,
OUT/report.pdf (when `diffaudit report --pdf` wrote one) to DEST/report.pdf, and saves DEST.png,
the first screen of its index page as rendered by Debian's chromium (playwright drives it;
nothing is downloaded).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def screenshot(index: Path, png: Path, width: int = 1280, height: int = 900) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(index.resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(png))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory (OUT)")
    parser.add_argument("dest", type=Path, help="where the report goes, e.g. reports/quickstart")
    args = parser.parse_args()
    source = args.run / "report"
    if not (source / "index.html").exists():
        sys.exit(f"error: {source / 'index.html'} not found: finish the run first (diffaudit run SUITE -o {args.run})")
    if args.dest.exists():
        shutil.rmtree(args.dest)
    shutil.copytree(source, args.dest)
    if (args.run / "report.pdf").is_file():
        shutil.copyfile(args.run / "report.pdf", args.dest / "report.pdf")
    png = args.dest.with_suffix(".png")
    if CHROMIUM.exists():
        screenshot(args.dest / "index.html", png)
        print(f"published {args.dest} and {png}")
    else:
        print(f"published {args.dest}; no screenshot: {CHROMIUM} missing (apt-get install chromium)")


if __name__ == "__main__":
    main()
