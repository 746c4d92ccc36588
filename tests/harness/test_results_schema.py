"""Stored records are typed and versioned: metrics.json and manifest.json carry a schema_version and
validate as CellResult / Manifest; results.csv is derived from them; a run directory written before
records had versions gets one line from the report naming the version and `diffaudit upgrade`,
which stamps records that validate, and a run re-measures such a cell from its stored images."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.report import ReportError, write_report
from audit.results import SCHEMA_VERSION, CellResult, Manifest, read_record
from audit.run.suite import run_suite
from audit.spec import load_suite, plan


@pytest.fixture
def finished_run(tmp_path, tiny_model_dir):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "typed", "models": [{"name": "tiny", "source": str(tiny_model_dir), "steps": 2}],
        "methods": [{"name": "none"}], "settings": [{"attributes": ["skin_tone"], "target": [0.3, 0.7]}],
        "samples": 6, "batch_size": 3, "labelers": ["synthfaces-eval"], "metrics": ["fairness"]}))
    suite = load_suite(path)
    out = tmp_path / "out"
    frame = run_suite(suite, out)
    (cell,) = plan(suite)
    return suite, out, out / "cells" / cell.cell_id, frame


def test_a_run_stores_typed_versioned_records_and_derives_its_table_from_them(finished_run):
    _, out, cell_dir, frame = finished_run
    result = read_record(cell_dir / "metrics.json", CellResult)
    manifest = read_record(cell_dir / "manifest.json", Manifest)
    assert result.schema_version == manifest.schema_version == SCHEMA_VERSION
    labeler = result.labelers["synthfaces-eval"]
    row = frame.iloc[0]
    assert (row["fd"], row["kl"], row["n_valid"], row["verdict"]) == (labeler.fd, labeler.kl, labeler.n_valid,
                                                                       labeler.verdict)
    assert manifest.seeds == {"first": 0, "count": 6, "rule": "image i uses seed first+i"}
    assert pd.read_csv(out / "results.csv")["fd"].tolist() == pytest.approx([labeler.fd])
    stored = pd.read_csv(out / "results.csv").iloc[0]      # the literature's definitions are columns
    assert set(labeler.literature) == {"heim_imbalance", "deviation_ratio", "normalized_entropy", "soft_fd"}
    for key, value in labeler.literature.items():
        assert stored[key] == pytest.approx(value)


def _make_schema_1(cell_dir) -> dict:
    """The cell's records as diffaudit wrote them before records carried a schema_version."""
    before = {}
    for name in ("metrics.json", "manifest.json"):
        data = json.loads((cell_dir / name).read_text())
        del data["schema_version"]
        (cell_dir / name).write_text(json.dumps(data))
        before[name] = data
    return before


def test_an_old_run_gets_one_line_from_the_report_and_upgrades(finished_run):
    _, out, cell_dir, _ = finished_run
    before = _make_schema_1(cell_dir)
    with pytest.raises(ReportError) as error:
        write_report(out)
    message = str(error.value)
    assert "written with results schema 1, this diffaudit reads schema 2" in message and "\n" not in message
    assert f"diffaudit upgrade {out.resolve()}" in message
    result = CliRunner().invoke(app, ["upgrade", str(out)])
    assert result.exit_code == 0 and "2 record(s) upgraded to results schema 2" in result.output, result.output
    after = json.loads((cell_dir / "metrics.json").read_text())
    assert after["schema_version"] == 2 and after["labelers"]["synthfaces-eval"]["fd"] == \
        before["metrics.json"]["labelers"]["synthfaces-eval"]["fd"]
    assert write_report(out).is_file()


def test_a_run_remeasures_a_schema_1_cell_from_its_stored_images(finished_run):
    suite, out, cell_dir, frame = finished_run
    _make_schema_1(cell_dir)
    images = {p.name: p.stat().st_mtime_ns for p in (cell_dir / "images").iterdir()}
    again = run_suite(suite, out)
    assert again["fd"].tolist() == frame["fd"].tolist()
    assert {p.name: p.stat().st_mtime_ns for p in (cell_dir / "images").iterdir()} == images  # not regenerated
    assert json.loads((cell_dir / "metrics.json").read_text())["schema_version"] == SCHEMA_VERSION
