"""Archive a run's measurements (not its images) into the repository, so a long benchmark can be
committed part-way and resumed in another checkout.

    python benchmarks/archive_run.py runs/efficacy benchmarks/results/efficacy_eta1_run
    cp -r benchmarks/results/efficacy_eta1_run runs/efficacy     # later, on a fresh checkout
    diffaudit run benchmarks/efficacy.yaml -o runs/efficacy  # finished cells are kept

Copies suite.json, results.csv/json (written after every cell, so current even for a run stopped
part-way: unrun cells are listed as pending), every calibration record and each finished cell's
metrics.json and manifest.json: the files `diffaudit run` needs to treat a cell as done (a cell is
done when its metrics.json exists) and efficacy_table.py needs to tabulate it. Images, labels and
per-batch records stay behind (a 1,000-image cell is ~4 MB of PNGs): an unfinished cell therefore
starts over when resumed, and a finished one cannot gain a new FID extractor or labeler without
being regenerated. DEST is replaced file by file; files of cells no longer in the run are kept.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

RUN_FILES = ("suite.json", "results.csv", "results.json")
CELL_FILES = ("metrics.json", "manifest.json")


def archive(run: Path, dest: Path) -> list[Path]:
    """Copy the run's measurement files to dest; returns the files written."""
    if not (run / "suite.json").is_file():
        raise SystemExit(f"error: {run}: no suite.json (give the output directory of `diffaudit run`)")
    written = []

    def copy(src: Path) -> None:
        target = dest / src.relative_to(run)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        written.append(target)

    for name in RUN_FILES:
        if (run / name).is_file():
            copy(run / name)
    for record in sorted((run / "calibration").glob("*.json")):
        copy(record)
    for cell in sorted((run / "cells").glob("*")):
        if (cell / "metrics.json").is_file():  # unfinished cells have nothing worth keeping
            for name in CELL_FILES:
                if (cell / name).is_file():
                    copy(cell / name)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="output directory of `diffaudit run`")
    parser.add_argument("dest", type=Path, help="where the archive goes (e.g. benchmarks/results/efficacy_eta1_run)")
    args = parser.parse_args(argv)
    written = archive(args.run, args.dest)
    cells = sum(1 for p in written if p.name == "metrics.json")
    print(f"{args.dest}: {len(written)} files, {cells} finished cells", file=sys.stderr)
    return written


if __name__ == "__main__":
    main()
