"""The methodology section names each labeler's measured accuracy with its provenance, as the run
recorded a `diffaudit labeler validate` result in the labeler's describe(), or "not validated"."""

from __future__ import annotations

import json

from audit.report.html import write_report


def test_labeler_validation_and_metric_definitions(make_run_dir, tmp_path, parse_html):
    out = make_run_dir(tmp_path / "out", samples=12, labelers=["synthfaces-eval", "other"])
    validation = {"file": "/cache/labelers/synthfaces-eval/abc.json", "data": "/data/faces", "n": 240,
                  "data_hash": "9f8e7d6c5b4a39281706", "date": "2026-11-30",
                  "accuracy": {"skin_tone": 0.9375, "eyeglasses": 0.8}}
    for manifest_path in (out / "cells").glob("*/manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        manifest["labelers"]["synthfaces-eval"]["validation"] = validation
        manifest["labelers"]["other"]["validation"] = "not validated"
        manifest_path.write_text(json.dumps(manifest))
    html = write_report(out).read_text()
    table = html.split('id="labelers-table"', 1)[1].split("</table>", 1)[0]
    rows = {r.split("</td>", 1)[0]: r for r in table.split('<tr><td class="text">')[1:]}
    assert ("accuracy skin_tone 93.8%, eyeglasses 80.0% on 240 labelled images of /data/faces "
            "(data hash 9f8e7d6c5b4a, 2026-11-30)") in rows["synthfaces-eval"]
    assert "not validated" in rows["other"] and "accuracy" not in rows["other"]
    definitions = parse_html(html.split('id="metric-definitions"', 1)[1].split("</dl>", 1)[0]).visible
    for term in ("FD", "KL", "TOST p", "Verdict", "Error-aware", "Holm, BH", "FID", "CLIP score"):
        assert term in definitions
