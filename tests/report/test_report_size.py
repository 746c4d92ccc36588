"""A quickstart-sized run (24 cells x 1,000 images) renders a report well under 20 MB, quickly."""

from __future__ import annotations

import time

from audit.report.html import GALLERY_MAX, write_report

MB = 1_000_000


def test_report_of_24_cells_x_1000_images_stays_small(large_run):
    assert len(list((large_run / "cells").iterdir())) == 24
    t0 = time.perf_counter()
    index = write_report(large_run)
    seconds = time.perf_counter() - t0
    files = [p for p in index.parent.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    thumbs = list((index.parent / "assets" / "thumbs").rglob("*.png"))
    print(f"\nreport of 24 cells x 1000 images: {size / MB:.2f} MB in {len(files)} files, rendered in {seconds:.1f} s")
    assert size < 20 * MB
    assert len(thumbs) == 24 * GALLERY_MAX
    assert index.stat().st_size < 1 * MB
    # scale sweeps of one method on one model and setting are drawn as curves
    assert "Lines join cells of one model and setting" in index.read_text()
