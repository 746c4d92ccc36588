"""Every suite in benchmarks/ (the example suites and benchmarks/research/'s diagnostics) validates
and dry-runs here, without its weights."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.spec import load_suite, plan

BENCH = Path(__file__).parents[1] / "benchmarks"
SUITES = sorted([*BENCH.glob("*.yaml"), *(BENCH / "research").glob("*.yaml")])


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize("suite", SUITES, ids=[str(s.relative_to(BENCH).with_suffix("")) for s in SUITES])
def test_example_suite_dry_runs(suite, empty_hf_cache):
    result = CliRunner().invoke(app, ["run", str(suite), "--dry-run"], terminal_width=200)
    assert "cells to run" in result.output
    models = load_suite(suite).models
    for model in models:
        status = "weights missing" if model.source.startswith("hf:") else \
            "finished images in" if model.source.startswith("images:") else "weights found"
        assert f"model {model.name}: {status}" in result.output
    missing = [m.name for m in models if m.source.startswith("hf:")]
    assert result.exit_code == (2 if missing else 0), result.output  # the plan, then: it cannot run yet
    if missing:
        assert f"not ready to run: the weights of {', '.join(missing)} are missing" in result.output


def test_occupation_suites_plan_one_cell_per_prompt_method_and_setting(empty_hf_cache):
    occupations = [line for line in (BENCH / "prompts" / "occupations.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
    assert len(occupations) == 20
    for name in ("sd15_occupations", "sdxl_occupations", "sd35_occupations", "flux_occupations"):
        suite = load_suite(BENCH / f"{name}.yaml")
        assert suite.models[0].prompts == occupations
        cells = plan(suite)
        assert len(cells) == 20 * len(suite.methods) * len(suite.settings)
        assert not any(c.skip_reason for c in cells)  # prompts make it a text model before the weights are here
    celebahq = load_suite(BENCH / "celebahq.yaml")
    cells = plan(celebahq)
    assert {c.prompt for c in cells} == {None} and celebahq.models[0].steps == 50
    assert {c.method.params.get("loss") for c in cells if c.method.name == "distribution_guidance"} == {"chi2"}
