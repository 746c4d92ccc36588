"""benchmarks/publish_report.py copies a run's report into the repository with a screenshot."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_publish_copies_the_report_and_screenshots_it(fixture_run, fixture_report, tmp_path):
    dest = tmp_path / "reports" / "demo"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "publish_report.py"), str(fixture_run), str(dest)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (dest / "index.html").read_bytes() == (fixture_run / "report" / "index.html").read_bytes()
    assert (dest / "results.csv").exists()
    if Path("/usr/bin/chromium").exists():
        assert dest.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_publish_refuses_an_unfinished_run(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "publish_report.py"), str(tmp_path),
                           str(tmp_path / "dest")], capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.strip().startswith("error:") and "Traceback" not in done.stderr
    assert not (tmp_path / "dest").exists()

