"""The README's main job, end to end on the bundled zoo (minutes on 2 cores: marked slow)."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.spec import load_suite, plan


def test_quickstart_suite_validates_and_plans():
    suite = load_suite("benchmarks/quickstart.yaml")
    cells = plan(suite)
    assert len(cells) == 2 * 4 * 3
    assert sum(bool(c.skip_reason) for c in cells) == 3  # prompt debiasing on the unconditional model
    result = CliRunner().invoke(app, ["run", "benchmarks/quickstart.yaml", "--dry-run", "--verbose"],
                                terminal_width=200)
    assert result.exit_code == 0 and "21 cells to run" in result.output
    # Unguided images are shared by the three settings of each model: 2 x 2 cells cost nothing
    # (counted in the per-cell table of --verbose; the summary says "3 (2 shared)" per model).
    assert result.output.count("shared") == 4


@pytest.mark.slow
def test_quickstart_runs_and_writes_results_and_report(tmp_path):
    out = tmp_path / "quickstart"
    result = CliRunner().invoke(app, ["run", "benchmarks/quickstart.yaml", "-o", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    assert (frame["status"] == "done").sum() == 21
    assert (out / "report" / "index.html").exists()
