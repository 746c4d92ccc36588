"""`diffaudit report` and `diffaudit leaderboard`: output paths, exit codes, one-line errors."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from audit.cli import app


def invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_report_command(fixture_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fixture_run, out, ignore=shutil.ignore_patterns("report"))
    result = invoke("report", out, "--tolerance", "0.5")
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and (out / "report" / "index.html").is_file()
    assert "set for this report" in (out / "report" / "index.html").read_text()


def test_leaderboard_command(fixture_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("leaderboard", fixture_run)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "leaderboard.html").is_file()
    result = invoke("leaderboard", fixture_run, fixture_run, "-o", tmp_path / "sub" / "lb.html")
    assert result.exit_code == 0 and (tmp_path / "sub" / "lb.html").is_file()


def test_bad_run_directories_exit_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [("report", tmp_path / "missing"), ("report", tmp_path / "empty"),
             ("leaderboard", tmp_path / "missing"), ("report", tmp_path / "empty", "--tolerance", "3")]
    for args in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output


def test_pdf_without_a_chromium_is_a_one_line_error(fixture_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(fixture_run, out, ignore=shutil.ignore_patterns("report"))
    monkeypatch.setenv("DIFFAUDIT_CHROMIUM", str(tmp_path / "no-chromium"))
    result = invoke("report", out, "--pdf")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: DIFFAUDIT_CHROMIUM=") and "no such file" in lines[0]
    assert not (out / "report.pdf").exists()
