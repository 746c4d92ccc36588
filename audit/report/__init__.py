"""HTML reports of run directories and leaderboards across runs (static pages, no network).

`write_report(OUT)` renders OUT/report/index.html; `write_leaderboard([OUT, ...], DEST)` one
sortable page across runs and suites. The report never loads a model: it reads results.json /
results.csv, suite.json, index.sqlite and each cell's metrics.json, manifest.json, labels and images.
"""

from audit.report.load import ReportError

__all__ = ["ReportError", "write_leaderboard", "write_report"]


def write_report(out, tolerance=None):
    from audit.report.html import write_report as _write

    return _write(out, tolerance=tolerance)


def write_leaderboard(outs, dest):
    from audit.report.leaderboard import write_leaderboard as _write

    return _write(outs, dest)
