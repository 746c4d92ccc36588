"""What the machine refuses (an output path that is a file, a directory this user cannot write,
a full disk) is one line and exit code 2, found before any model loads where it can be, and a
full disk mid-run leaves every file already written whole, so the same command resumes."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from audit.cli import app

REPO = Path(__file__).parents[2]


def suite_file(tmp_path, model_dir, **changes):
    data = {"name": "tiny", "models": [{"name": "tiny", "source": str(model_dir), "steps": 2}],
            "methods": [{"name": "none"}], "settings": [{"attributes": ["skin_tone"]}],
            "samples": 4, "batch_size": 2, "labelers": ["synthfaces-eval"], "metrics": ["fairness"], **changes}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if anything tries to load a diffusion model."""
    from audit.models.adapter import ModelAdapter

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(ModelAdapter, "from_directory", refuse)


def test_out_that_is_a_file_or_under_a_file_fails_before_any_model_loads(tmp_path, tiny_model_dir, no_model_loads):
    suite = suite_file(tmp_path, tiny_model_dir)
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a directory")
    line = one_error_line(CliRunner().invoke(app, ["run", str(suite), "-o", str(a_file)]))
    assert line == f"error: -o/--out {a_file} is a file, not a directory: give a directory path"
    line = one_error_line(CliRunner().invoke(app, ["run", str(suite), "-o", str(a_file / "out")]))
    assert f"{a_file} is a file, so {a_file / 'out'} cannot be created under it" in line
    line = one_error_line(CliRunner().invoke(app, ["run", str(suite), "-o", str(a_file), "--dry-run"]))
    assert "is a file, not a directory" in line
    assert a_file.read_text() == "not a directory"


def test_leaderboard_and_report_outputs_are_checked_first(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = one_error_line(CliRunner().invoke(app, ["leaderboard", str(tmp_path), "-o", str(tmp_path)]))
    assert line == f"error: -o/--output {tmp_path} is a directory, not a file: give a file path"
    line = one_error_line(CliRunner().invoke(app, ["leaderboard", str(tmp_path), "-o", str(a_file / "b.html")]))
    assert f"{a_file} is a file, so {a_file / 'b.html'} cannot be created under it" in line
    line = one_error_line(CliRunner().invoke(app, ["report", str(a_file)]))
    assert "not a directory" in line


def cli_without_root_override(*args: str) -> subprocess.CompletedProcess:
    """`python -m audit.cli ARGS` as a user that file permissions apply to: root ignores them, so
    as root the command runs without the capabilities that let it (CAP_DAC_OVERRIDE)."""
    command = [sys.executable, "-m", "audit.cli", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and setpriv is not here to drop root's permission override")
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *command]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_a_read_only_out_fails_in_one_line_before_anything_is_written(tmp_path, tiny_model_dir):
    suite = suite_file(tmp_path, tiny_model_dir)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        for out in (read_only, read_only / "run"):
            done = cli_without_root_override("run", str(suite), "-o", str(out))
            assert done.returncode == 2, done.stderr
            assert done.stderr.strip() == (f"error: -o/--out {out}: {read_only} is not writable by this user; "
                                           "give a directory you can write (or change its permissions)")
            assert "Traceback" not in done.stdout + done.stderr
        done = cli_without_root_override("report", str(read_only))
        assert done.returncode == 2 and "is not writable by this user" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        read_only.chmod(0o755)
    assert list(read_only.iterdir()) == []


def fail_image_writes_after(monkeypatch, count: int, error: OSError) -> None:
    """The store's image write (PIL's save into the temporary file) raises `error` from the
    (count + 1)-th image on, as a disk that fills up mid-run does."""
    save = Image.Image.save
    calls = []

    def save_until_full(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) > count:
            Path(fp).write_bytes(b"\x89PNG half")  # what a full disk leaves: a torn temporary file
            raise error
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_full)


def test_a_full_disk_mid_run_is_one_line_and_what_was_written_stays_whole(tmp_path, tiny_model_dir, monkeypatch):
    suite, out = suite_file(tmp_path, tiny_model_dir), tmp_path / "out"
    with monkeypatch.context() as patch:
        fail_image_writes_after(patch, 2, OSError(errno.ENOSPC, "No space left on device"))
        line = one_error_line(CliRunner().invoke(app, ["run", str(suite), "-o", str(out)]))
    assert line == (f"error: no space left on the disk holding {out} (writing it failed; files already written are "
                    "intact): free space or give another -o, then run the same command again to resume")
    cell = next((out / "cells").iterdir())
    assert json.loads((out / "suite.json").read_text())["name"] == "tiny"
    assert json.loads((cell / "manifest.json").read_text())["cell_id"] == cell.name
    assert json.loads((cell / "batches" / "000000.json").read_text())["seeds"] == [0, 1]
    for seed in (0, 1):
        with Image.open(cell / "images" / f"{seed:08d}.png") as image:
            image.verify()
    assert not (cell / "batches" / "000001.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no torn file left behind
    result = CliRunner().invoke(app, ["run", str(suite), "-o", str(out)])  # space again: the run resumes
    assert result.exit_code == 0, result.output
    generated = [e for e in (out / "events.log").read_text().splitlines() if " generated " in e]
    assert [e.split(" batch ")[1][:1] for e in generated] == ["0", "1"]  # batch 0 was not generated twice


def test_a_write_refused_mid_run_names_the_file(tmp_path, tiny_model_dir, monkeypatch):
    suite, out = suite_file(tmp_path, tiny_model_dir), tmp_path / "out"
    blocked = str(out / "cells" / "some.png")
    fail_image_writes_after(monkeypatch, 0, PermissionError(errno.EACCES, "Permission denied", blocked))
    line = one_error_line(CliRunner().invoke(app, ["run", str(suite), "-o", str(out)]))
    assert line == f"error: cannot write {blocked}: Permission denied; give a location you can write"


def test_version_is_the_installed_packages():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from audit.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"diffaudit {version('diffaudit')}"
