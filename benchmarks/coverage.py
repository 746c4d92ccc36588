"""Coverage of every interval a cell reports, by simulating audits with a known truth.

Each scenario draws `--reps` audits from a known class distribution (and, for the error-aware
rows, a known 85%-accurate labeler whose confusion counts are themselves drawn from labelled
data), runs them through audit.metrics.cell.fairness_metrics, the code path of a real cell, and
counts how often each reported interval contains the truth:

- per class: each class's interval (p_intervals; error_aware lo/hi), the mean over classes and
  the worst class;
- all at once: every class's interval at the same time (the simultaneous intervals where the
  metrics have them, else the per-class ones, which is what a reader would have used);
- FD: [fd_lo, fd_hi] against the true FD; error-aware FD: the error-aware FD interval.

Each scenario also scores the intervals a reader had before simultaneous and error-aware FD
intervals existed ("before"): all at once from the per-class intervals, and for the error-aware
rows the FD interval of the labeler's output. `--write PREFIX` writes PREFIX.md and PREFIX.json
(benchmarks/results/coverage.*), with the figures the audit found before its fixes beside them.

A 95% interval should cover 93-97% of the time; with 1,000 audits the standard error of a
coverage near 95% is 0.7 points. A benchmark, not a test (tests/metrics/test_coverage.py runs
the same simulations, quick by default and at full size under -m slow).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/coverage.py [--reps 1000] [--only NAME]
        [--error-aware-resamples B] [--write benchmarks/results/coverage]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np
import pandas as pd

from audit.metrics import cell
from audit.metrics.cell import fairness_metrics
from audit.spec import SettingSpec

CONFUSION2 = np.array([[0.85, 0.15], [0.15, 0.85]])
CONFUSION4 = np.array([[0.85, 0.10, 0.04, 0.01],
                       [0.05, 0.85, 0.08, 0.02],
                       [0.02, 0.03, 0.85, 0.10],
                       [0.10, 0.00, 0.05, 0.85]])
P2 = np.array([0.3, 0.7])
P4 = np.array([0.4, 0.3, 0.2, 0.1])


@dataclass
class Scenario:
    name: str
    marginals: list[np.ndarray]            # true class distribution of each attribute (independent)
    n: int                                 # generated (valid) samples per audit
    confusions: list[np.ndarray] | None = None   # the labeler's true confusion per attribute
    labelled: int = 2000                   # labelled samples per true class behind each confusion
    target: np.ndarray | None = None       # joint target; uniform when None

    @property
    def p(self) -> np.ndarray:
        return reduce(np.multiply.outer, self.marginals).ravel()


def scenarios() -> list[Scenario]:
    near = np.full(4, 0.25) + np.array([0.03, 0.0, 0.0, -0.03])
    return [
        Scenario("K=2 off target", [P2], 500),
        Scenario("K=2 on target", [np.full(2, 0.5)], 500),
        Scenario("K=4 off target", [P4], 500),
        Scenario("K=4 on target", [np.full(4, 0.25)], 500),
        Scenario("K=4 near target (FD 0.042)", [near], 500),
        Scenario("K=4 on target, n=100", [np.full(4, 0.25)], 100),
        Scenario("joint 2x4 off target", [P2, P4], 1000),
        Scenario("error-aware K=2", [P2], 2000, [CONFUSION2]),
        Scenario("error-aware K=4", [P4], 2000, [CONFUSION4]),
        Scenario("error-aware joint 2x4", [P2, P4], 2000, [CONFUSION2, CONFUSION4]),
    ]


class SimulatedLabeler:
    name = "simulated"

    def __init__(self, attributes: dict[str, list[str]], confusion_counts: dict[str, np.ndarray] | None):
        self.attributes = attributes
        if confusion_counts is not None:
            self.confusion = lambda: confusion_counts


def simulate(s: Scenario, reps: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    names = [f"a{i}" for i in range(len(s.marginals))]
    classes = {a: [f"c{j}" for j in range(len(m))] for a, m in zip(names, s.marginals, strict=True)}
    k = int(np.prod([len(m) for m in s.marginals]))
    target = np.full(k, 1 / k) if s.target is None else s.target
    setting = SettingSpec(attributes=names, classes=classes, target=target.tolist())
    p = s.p
    true_fd = float(np.linalg.norm(p - target))
    hits: dict[str, list] = {"per class": [], "all at once": [], "FD": [], "all at once before": [], "FD before": []}
    for _ in range(reps):
        truth = [rng.choice(len(m), size=s.n, p=m) for m in s.marginals]
        if s.confusions is None:
            predicted, confusion_counts = truth, None
        else:
            # the labeler errs on each attribute independently given the true classes
            cumulative = [np.cumsum(C, axis=1) for C in s.confusions]
            predicted = [(rng.random(s.n)[:, None] > cum[t]).sum(1) for t, cum in zip(truth, cumulative, strict=True)]
            confusion_counts = {a: rng.multinomial(s.labelled, C) for a, C in zip(names, s.confusions, strict=True)}
        table = {f"p:{a}:{c}": (pred == j).astype(float) for a, pred in zip(names, predicted, strict=True)
                 for j, c in enumerate(classes[a])}
        labels = pd.DataFrame({**table, "valid": np.ones(s.n, bool), "reason": ""})
        m = fairness_metrics(labels, SimulatedLabeler(classes, confusion_counts), setting, tolerance=0.05)
        if s.confusions is None:
            per = np.asarray(m["p_intervals"])
            sim = np.asarray(m.get("p_intervals_simultaneous", per))
            fd_lo, fd_hi = m["fd_lo"], m["fd_hi"]
        else:
            ea = m["error_aware"]
            per = np.stack([ea["lo"], ea["hi"]], axis=1)
            sim = np.stack([ea.get("lo_simultaneous", ea["lo"]), ea.get("hi_simultaneous", ea["hi"])], axis=1)
            fd_lo, fd_hi = ea.get("fd_lo", m["fd_lo"]), ea.get("fd_hi", m["fd_hi"])
        covered = (per[:, 0] <= p) & (p <= per[:, 1])
        hits["per class"].append(covered)
        hits["all at once"].append(np.all((sim[:, 0] <= p) & (p <= sim[:, 1])))
        hits["FD"].append(fd_lo <= true_fd <= fd_hi)
        hits["all at once before"].append(np.all(covered))
        hits["FD before"].append(m["fd_lo"] <= true_fd <= m["fd_hi"])
    per_class = np.mean(hits["per class"], axis=0)
    return {"per class": float(per_class.mean()), "worst class": float(per_class.min()),
            "classes": per_class.round(4).tolist(), "true FD": true_fd,
            **{key: float(np.mean(hits[key])) for key in ("all at once", "FD", "all at once before", "FD before")}}


# What the audit of the statistics found before its fixes (500-1,000 simulated audits each), in
# its words: error-aware intervals from inflated joint confusion counts ("as shipped"), per class
# only, and no error-aware FD interval (the labeler's FD interval read in its place).
FOUND_BEFORE = {
    "error-aware K=2": "per class 0.83 as shipped",
    "error-aware K=4": "all at once 0.71 as shipped, 0.80 from per-class intervals; FD 0.578",
}


def write(prefix: str, rows: list[dict], args, seconds: float) -> None:
    """PREFIX.json (every figure) and PREFIX.md (the table, after beside before)."""
    command = (f"OMP_NUM_THREADS=1 PYTHONPATH=. nice -n 5 python benchmarks/coverage.py --reps {args.reps} "
               f"--seed {args.seed}"
               f"{f' --only {args.only!r}' if args.only else ''} --error-aware-resamples {args.error_aware_resamples}"
               f" --write {prefix}")
    meta = {"command": command, "reps": args.reps, "seed": args.seed, "seconds": round(seconds),
            "bootstrap_resamples": cell.BOOTSTRAP_RESAMPLES, "error_aware_resamples": args.error_aware_resamples,
            "found_before": FOUND_BEFORE}
    Path(f"{prefix}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")

    def cell_of(now: float, before: float | None) -> str:
        return f"{now:.3f}" if before is None or abs(before - now) < 5e-4 else f"{before:.3f} → {now:.3f}"

    lines = ["# Coverage of diffaudit's 95% intervals\n",
             f"`{command}` ({args.reps} simulated audits per row, so the standard error of a coverage near 95% is "
             f"{np.sqrt(0.95 * 0.05 / args.reps):.3f}; bar 93-97%; {round(seconds / 60)} min on one core). "
             f"Bootstrap resamples: {cell.BOOTSTRAP_RESAMPLES} (FD), {args.error_aware_resamples} (error-aware).\n",
             "\"a → b\": b is the interval a cell reports now, a the one a reader had before (all at once: the "
             "per-class intervals; error-aware FD: the FD interval of the labeler's output). \"Found before\": what "
             "the audit of the statistics measured before the fixes.\n",
             "| scenario | n | true FD | per class, mean | worst class | all at once | FD | found before |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        found = FOUND_BEFORE.get(r["scenario"], "—")
        lines.append(f"| {r['scenario']} | {r['n']:,} | {r['true FD']:.3f} | {r['per class']:.3f} | "
                     f"{r['worst class']:.3f} | {cell_of(r['all at once'], r['all at once before'])} | "
                     f"{cell_of(r['FD'], r['FD before'])} | {found} |")
    lines.append("\nHow to read the rows below 93%: docs/metrics.md, section Coverage.")
    Path(f"{prefix}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="run the scenarios whose name contains this")
    parser.add_argument("--error-aware-resamples", type=int, default=cell.ERROR_AWARE_RESAMPLES,
                        help="bootstrap resamples of the error-aware intervals (default: what a cell uses)")
    parser.add_argument("--write", default=None, metavar="PREFIX", help="write PREFIX.md and PREFIX.json")
    args = parser.parse_args()
    cell.ERROR_AWARE_RESAMPLES = args.error_aware_resamples
    start, rows = time.perf_counter(), []
    se = np.sqrt(0.95 * 0.05 / args.reps)
    print(f"95% intervals, {args.reps} simulated audits per scenario (SE of a 95% coverage: {se:.3f})\n")
    print("| scenario | n | true FD | per class (mean) | worst class | all at once | FD | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for s in scenarios():
        if args.only and args.only not in s.name:
            continue
        t0 = time.perf_counter()
        r = simulate(s, args.reps, args.seed)
        rows.append({"scenario": s.name, "n": s.n, **r, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"| {s.name} | {s.n} | {r['true FD']:.3f} | {r['per class']:.3f} | {r['worst class']:.3f} | "
              f"{r['all at once']:.3f} | {r['FD']:.3f} | {time.perf_counter() - t0:.0f} |", flush=True)
    if args.write:
        write(args.write, rows, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
