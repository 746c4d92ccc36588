"""Calibrate every `scale: auto` cell of a zoo suite (the quickstart by default) into OUT and
compare each chosen scale with the record the zoo ships for the same cell under another rule.
Trials of the shipped records are replayed where the search asks for the same trial (they are
deterministic); what they lack (first batches, other scales, aims) is generated. Ship the
result with `diffaudit zoo ship-calibrations OUT`.

    OMP_NUM_THREADS=1 python benchmarks/calibration_ship.py --out runs/calibration-ship \\
        --json benchmarks/results/calibration_search_quickstart.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from audit.registry import METHODS, resolve
from audit.run import calibration
from audit.run.build import supplied_arguments
from audit.run.context import RunContext
from audit.spec import load_suite, plan
from audit.store import RunStore


def shipped_records(source: str) -> list[dict]:
    record = calibration.shipped_calibration(source, "x.json")
    folder = None if record is None else record.parent
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder is not None else []


def from_scratch(record: dict) -> int:
    """The images the record's search generates with nothing to replay: its full trials, the coarse
    trials it never completed (a completed one's batches are part of its full trial) and its aims."""
    full = {t["scale"] for t in record["tried"]}
    return (sum(t["n"] for t in record["tried"]) + sum(t["n"] for t in record["coarse"] if t["scale"] not in full)
            + sum(t["n"] for t in record["aimed"]))


def same_cell(config: dict, other: dict) -> bool:
    drop = ("rule", "probes", "revision")
    return {k: v for k, v in config.items() if k not in drop} == {k: v for k, v in other.items() if k not in drop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default="benchmarks/quickstart.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", help="only this model's cells")
    parser.add_argument("--method", help="only this method's cells")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calibration.EARLIER_RULES = ()  # calibrate under RULE: an earlier rule's record is what it is compared with
    suite = load_suite(args.suite)
    ctx = RunContext(suite=suite, store=RunStore(args.out), log=lambda s: print(s, file=sys.stderr, flush=True))
    rows = []
    for cell in plan(suite):
        if cell.skip_reason or cell.method.params.get("scale") != "auto" or args.model not in (None, cell.model.name) \
                or args.method not in (None, cell.method.name):
            continue
        factory, params = resolve(METHODS, cell.method.name, "method"), dict(cell.method.params)
        supplied = supplied_arguments(ctx, cell, factory, params)
        n = calibration.calibration_samples(len(supplied["target"]))
        config = json.loads(json.dumps(calibration.calibration_config(ctx, cell, factory, supplied, params, n=n),
                                       default=str))
        before = [r for r in shipped_records(cell.model.source)
                  if same_cell(config, r["config"]) and r["config"]["rule"] != calibration.RULE]
        start = time.perf_counter()
        chosen = calibration.calibrate(ctx, cell, factory, supplied, params, n=n)
        seconds = time.perf_counter() - start
        record = json.loads(next((args.out / "calibration").glob(
            f"{cell.model.name}-{calibration.record_name(config)}")).read_text())
        old = before[0] if before else None
        row = {"cell": f"{cell.model.name}/{cell.method.name}/{cell.setting.key}", "n": n,
               "before": None if old is None else {"scale": old["scale"], "aim": old.get("aim"),
                                                   "images": n * len(old["tried"]) + sum(t["n"] for t in old["aimed"]),
                                                   "tried": [t["scale"] for t in old["tried"]]},
               "after": {"scale": chosen["scale"], "aim": chosen["aim"], "tried": [t["scale"] for t in record["tried"]],
                         "coarse": [t["scale"] for t in record["coarse"]],
                         "images": from_scratch(record),
                         "generated_now": record["images"], "seconds_now": round(seconds, 1)},
               "images_ratio_to_1000": round(from_scratch(record) / 1000, 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            result = {"suite": args.suite, "rule": calibration.RULE, "cells": rows}
            args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
