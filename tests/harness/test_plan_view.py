"""The dry run's summary and the results table read in an 80-column terminal: counts that match
the plan, few lines, nothing cut into ellipses."""

from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from audit.cli import app
from audit.plan_view import print_plan, print_summary
from audit.spec import load_suite, plan

BENCH = Path(__file__).parents[2] / "benchmarks"
SUITES = sorted([*BENCH.glob("*.yaml"), *(BENCH / "research").glob("*.yaml")])


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def narrow(lines: list[str]) -> list[str]:
    """Lines over 80 columns, less the weights-status lines: one unwrapped line each (an error
    or path to copy) that the terminal wraps, never rich."""
    return [ln for ln in lines if len(ln) > 80 and not ln.startswith("model ")]  # (not the header: < 80)


def dry_run(suite, verbose=False) -> list[str]:
    console = Console(width=80, record=True, file=StringIO())
    print_plan(load_suite(suite), console, verbose=verbose)
    return console.export_text().splitlines()


def test_quickstart_summary_counts_match_the_plan():
    cells = plan(load_suite(BENCH / "quickstart.yaml"))
    lines = dry_run(BENCH / "quickstart.yaml")
    assert len(lines) < len(cells) and not [ln for ln in lines if len(ln) > 80]  # zoo paths are short
    text = "\n".join(lines)
    assert "suite quickstart: 24 cells" in text and "21 cells to run, 3 not applicable" in text
    assert "…" not in text
    rows = {ln.split()[0]: ln for ln in lines if ln.startswith("  ")}  # method rows of the last model
    assert "3 (2 shared)" in rows["none"]  # unguided images generated once for 3 settings
    assert "n/a (prompt on synthfaces-ddpm): prompt debiasing needs a text-conditioned model" in text
    ddpm = next(i for i, ln in enumerate(lines) if ln.strip() == "synthfaces-ddpm")
    assert "3 n/a" in lines[ddpm + 2]
    # The zoo ships these calibrations and probes: the total is the cells' alone.
    assert "calibration: all 12 scale: auto records and every probe shipped or cached" in text
    assert "estimated total ~4.0 min on 2 CPU cores" in text
    assert sum(ln.startswith("model synthfaces-") for ln in lines) == 2


def test_verbose_prints_one_row_per_cell():
    cells = plan(load_suite(BENCH / "quickstart.yaml"))
    console = Console(width=250, record=True, file=StringIO())
    print_plan(load_suite(BENCH / "quickstart.yaml"), console, verbose=True)
    text = console.export_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("│") and ln.split("│")[1].strip().isdigit()]
    assert len(rows) == len(cells) and text.count("shared") == 4


def test_uncalibrated_scale_auto_is_estimated_as_an_upper_bound(tmp_path):
    """A suite whose calibration is shipped nowhere: up to the whole grid walk and aim
    corrections, on calibration_samples(k) seeds each, and the probe training of a non-zoo
    prompt, enter the total."""
    text = (BENCH / "quickstart.yaml").read_text().replace("batch_size: 64", "batch_size: 32").replace(
        'prompts: ["a photo of a person"]', 'prompts: ["a photo of a face"]')
    (tmp_path / "s.yaml").write_text(text)
    lines = dry_run(tmp_path / "s.yaml")
    out = "\n".join(lines)
    assert "calibration: 12 of 12 scale: auto calibrations to make" in out
    assert "probe training for synthfaces-t2i: 512 samples" in out
    assert "estimated total up to ~" in out and not narrow(lines)


@pytest.mark.parametrize("suite", SUITES, ids=[str(s.relative_to(BENCH).with_suffix("")) for s in SUITES])
def test_every_suite_dry_runs_in_80_columns_through_the_cli(suite, empty_hf_cache):
    cells = plan(load_suite(suite))
    result = CliRunner().invoke(app, ["run", str(suite), "--dry-run"], env={"COLUMNS": "80"})
    missing = any(m.source.startswith("hf:") for m in load_suite(suite).models)
    assert result.exit_code == (2 if missing else 0), result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("error: not ready to run")]
    assert not narrow(lines) and "…" not in result.output
    applicable = sum(not c.skip_reason for c in cells)
    assert f"{len(cells)} cells" in result.output
    assert f"{applicable} cells to run, {len(cells) - applicable} not applicable" in result.output
    methods = {(c.model.name, c.method.display) for c in cells}
    assert len(lines) < 30 + len(methods) + len({c.model.name for c in cells})


def test_verbose_through_the_cli():
    result = CliRunner().invoke(app, ["run", str(BENCH / "quickstart.yaml"), "--dry-run", "--verbose"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0 and result.output.count("shared") == 4


def test_results_summary_fits_80_columns_with_verdicts_and_fds_whole():
    frame = pd.read_csv(Path(__file__).parents[2] / "reports" / "quickstart" / "results.csv")
    console = Console(width=80, record=True, file=StringIO())
    print_summary(frame, console)
    text = console.export_text()
    assert not [ln for ln in text.splitlines() if len(ln) > 80] and "…" not in text
    for row in frame[frame["status"] == "done"].itertuples():
        assert f"{row.fd:.3f}" in text and f"[{row.fd_lo:.3f}, {row.fd_hi:.3f}]" in text
    assert "off target" in text and "(needs ~852)" in text and "not applicable" in text
    assert "results (labeler synthfaces-eval, target uniform)" in text
    wide = Console(width=160, record=True, file=StringIO())
    print_summary(frame, wide)
    wide_text = wide.export_text()
    assert "img/s" in wide_text and "KL" in wide_text


def test_results_summary_says_why_a_value_is_missing():
    frame = pd.DataFrame([{"model": "m", "method": "none", "attributes": "a", "target": "uniform", "prompt": None,
                           "labeler": "l", "status": "done", "n": 10, "n_valid": 0, "invalid_reasons": "all black",
                           "fd": None, "fd_lo": None, "fd_hi": None, "verdict": None, "samples_needed": None,
                           "kl": None, "fid": None, "images_per_s": None}])
    console = Console(width=80, record=True, file=StringIO())
    print_summary(frame, console)
    text = " ".join(console.export_text().split())
    assert "not measured: no valid sample" in text and "(all black)" in text
