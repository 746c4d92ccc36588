"""Batch-size ablation for distribution guidance: FD, KL, FID and seconds per batch size.

Distribution guidance steers a batch's *predicted distribution*, so it needs batches large
enough for that distribution to mean something (the paper used 100). This runs the base suite's
distribution-guidance entry (efficacy.yaml: `scale: auto`, chi-square) on one setting (skin tone
toward uniform) once per batch size, each in its own run directory OUT/batch-B (resumable: the
runner is), and writes one JSON with a row per batch size.

    python benchmarks/batch_ablation.py                      # 8 16 32 64 128, 1,000 samples, 50 steps
    python benchmarks/batch_ablation.py --n 64 --steps 10    # a quick look
    python benchmarks/batch_ablation.py --method distribution_guidance-assign --out runs/batch-ablation-assign \
        --json benchmarks/results/batch_ablation_assign.json

`scale: auto` calibrates in each cell's own batch size. Cells of batch 64 have the ids of
efficacy.yaml's and research/guidance_bars.yaml's distribution-guidance skin-tone cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (8, 16, 32, 64, 128)


def ablation_suite(base, batch_size: int, n: int | None, steps: int | None, method: str | None = None):
    """The base suite reduced to its first model, its first distribution-guidance method (or the
    one displayed as `method`) and the skin_tone-uniform setting (else its first setting), in
    batches of `batch_size`."""
    from audit.spec import SuiteError

    methods = [m for m in base.methods if m.name == "distribution_guidance"]
    if not methods:
        raise SuiteError(f"suite {base.name!r} lists no distribution_guidance method to ablate")
    if method is not None:
        named = [m for m in methods if m.display == method]
        if not named:
            raise SuiteError(f"suite {base.name!r} has no distribution_guidance entry displayed as {method!r}; "
                             f"--method must be one of {[m.display for m in methods]}")
        methods = named
    settings = [s for s in base.settings if s.attributes == ["skin_tone"] and s.target == "uniform"] or base.settings
    model = base.models[0].model_copy(update={"steps": steps} if steps else {})
    return base.model_copy(update={"name": f"{base.name}-batch-{batch_size}", "models": [model],
                                   "methods": methods[:1], "settings": settings[:1], "batch_size": batch_size,
                                   "samples": n or base.samples})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=ROOT / "benchmarks" / "efficacy.yaml",
                        help="base suite: its first model, first distribution_guidance method, skin_tone uniform")
    parser.add_argument("--out", type=Path, default=Path("runs/batch-ablation"), help="root of the run directories")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--n", type=int, default=None, help="samples per batch size (default: the suite's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the suite's)")
    parser.add_argument("--method", default=None,
                        help="which distribution_guidance entry (its label) to ablate (default: the suite's first)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "batch_ablation.json")
    args = parser.parse_args(argv)

    from rich.console import Console

    from audit.files import atomic_write_json
    from audit.report.load import fid_values, number
    from audit.run.suite import run_suite
    from audit.spec import SuiteError, load_suite

    console = Console(stderr=True)
    try:
        base = load_suite(args.suite)
        if any(b < 1 for b in args.batches) or (args.n is not None and args.n < 1) or \
                (args.steps is not None and args.steps < 1):
            raise SuiteError("--batches, --n and --steps must be positive")
        suites = {b: ablation_suite(base, b, args.n, args.steps, args.method) for b in args.batches}
    except SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    rows = []
    for batch_size, suite in suites.items():
        out = args.out / f"batch-{batch_size}"
        console.print(f"batch size {batch_size}: {out}", markup=False, highlight=False)
        frame = run_suite(suite, out, device=args.device, console=console, suite_path=str(args.suite))
        primary = suite.labelers[0]
        found = frame[frame["labeler"] == primary]
        record = (found if len(found) else frame).iloc[0].to_dict()
        manifest = out / "cells" / str(record["cell_id"]) / "manifest.json"
        scale = json.loads(manifest.read_text())["method"].get("scale") if manifest.is_file() else None
        fids, fid_targets = fid_values(record)
        row = {"batch_size": batch_size, "run": str(out), "cell_id": record["cell_id"], "status": record["status"],
               "labeler": record.get("labeler"), "scale": number(scale), "n": number(record.get("n")),
               "n_valid": number(record.get("n_valid")), "fd": number(record.get("fd")),
               "fd_lo": number(record.get("fd_lo")), "fd_hi": number(record.get("fd_hi")),
               "kl": number(record.get("kl")), "fid": fids, "fid_target": fid_targets,
               "seconds": number(record.get("seconds")), "images_per_s": number(record.get("images_per_s"))}
        rows.append(row)
        console.print(f"  FD {row['fd']} [{row['fd_lo']}, {row['fd_hi']}], KL {row['kl']}, FID {row['fid']}, "
                      f"{row['seconds']} s", markup=False, highlight=False)

    first = next(iter(suites.values()))
    result = {"suite": str(args.suite), "model": first.models[0].model_dump(include={"name", "source", "steps"}),
              "method": first.methods[0].model_dump(), "setting": first.settings[0].model_dump(),
              "samples": first.samples, "seed": first.seed, "labeler": first.labelers[0],
              "fid": [f.model_dump() for f in first.fid] if "fid" in first.metrics else [], "device": args.device,
              "batches": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, result)
    console.print(f"wrote {args.json}", markup=False, highlight=False)
    return result


if __name__ == "__main__":
    main()
