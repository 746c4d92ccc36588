"""Time every fairness metric of a cell at audit scale: 100,000 samples x 3 attributes.

The bar is <= 5 s on 2 cores for all fairness metrics with 1,000-resample intervals: FD
and its interval, KL both ways, chi-square, TOST, per-class Wilson intervals, soft proportions,
the error-aware estimate with its interval, plus Holm control across the attributes and labeler
agreement. They run through audit.metrics.cell.fairness_metrics, the code path of a real cell,
on each attribute alone and on the joint (16-class) attribute. A benchmark, never a test: the
figure depends on the machine.

    OMP_NUM_THREADS=1 python benchmarks/metrics_speed.py [--samples 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from audit.metrics import functional as F
from audit.metrics.cell import BOOTSTRAP_RESAMPLES, fairness_metrics, labeler_agreement
from audit.spec import SettingSpec
from audit.zoo import zoo_path
from audit.zoo.synthfaces import ATTRIBUTES, BIASED_WORLD

AUDITED = ("skin_tone", "eyeglasses", "hair_color")
TARGET_S = 5.0


class ZooConfusionLabeler:
    """What fairness_metrics needs of a labeler (classes and the measured confusion counts of
    synthfaces-eval) without loading its CNN: the labels here are simulated."""

    name = "synthfaces-eval"
    attributes = {a: list(c) for a, c in ATTRIBUTES.items()}

    def confusion(self) -> dict[str, np.ndarray]:
        data = json.loads((zoo_path(self.name) / "confusion.json").read_text())
        return {a: np.asarray(v["confusion"]) for a, v in data["attributes"].items()}


def label_table(n: int, seed: int = 0, labeler_seed: int = 0, flip: float = 0.05,
                invalid: float = 0.01) -> pd.DataFrame:
    """A label table like a labeler writes: p:<attribute>:<class> columns, valid and reason, for
    n biased-world faces (`seed`), the labeler (`labeler_seed`) wrong on `flip` of them and
    finding no face in `invalid` of them."""
    truth = BIASED_WORLD.sample_attributes(np.random.default_rng(seed), n)
    rng = np.random.default_rng([seed, labeler_seed])
    columns: dict[str, np.ndarray] = {}
    for a in AUDITED:
        k = len(ATTRIBUTES[a])
        wrong = rng.random(n) < flip
        predicted = np.where(wrong, (truth[a] + rng.integers(1, k, n)) % k, truth[a])
        logits = rng.normal(0, 1, (n, k))
        logits[np.arange(n), predicted] += 4
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        for j, c in enumerate(ATTRIBUTES[a]):
            columns[f"p:{a}:{c}"] = probs[:, j]
    valid = rng.random(n) >= invalid
    return pd.DataFrame({"seed": np.arange(n), **columns, "valid": valid,
                         "reason": np.where(valid, None, "no face")})


def measure(samples: int = 100_000, repeats: int = 3, seed: int = 0) -> dict:
    """Median seconds of each setting's fairness_metrics and of the whole set (the bar: <= 5 s)."""
    labels = label_table(samples, seed)
    other = label_table(samples, seed, labeler_seed=1)  # a second labeler of the same faces (agreement)
    labeler = ZooConfusionLabeler()
    settings = {a: SettingSpec(attributes=[a]) for a in AUDITED}
    settings["x".join(AUDITED)] = SettingSpec(attributes=list(AUDITED))
    per_setting: dict[str, list[float]] = {name: [] for name in settings}
    extras, totals = [], []
    result: dict = {}
    for _ in range(repeats):
        start = time.perf_counter()
        for name, setting in settings.items():
            t = time.perf_counter()
            result[name] = fairness_metrics(labels, labeler, setting, tolerance=0.05)
            per_setting[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        holm = F.adjust_pvalues([result[a]["chi2_p"] for a in AUDITED], "holm")
        agreement = labeler_agreement({"a": labels, "b": other}, settings["x".join(AUDITED)])
        extras.append(time.perf_counter() - t)
        totals.append(time.perf_counter() - start)
    total = statistics.median(totals)
    joint = result["x".join(AUDITED)]
    return {
        "samples": samples, "attributes": list(AUDITED), "resamples": BOOTSTRAP_RESAMPLES, "repeats": repeats,
        "seconds_total": round(total, 4), "target_s": TARGET_S, "passes": total <= TARGET_S,
        "seconds_per_setting": {name: round(statistics.median(v), 4) for name, v in per_setting.items()},
        "seconds_holm_and_agreement": round(statistics.median(extras), 4),
        "example": {"setting": "x".join(AUDITED), "n_valid": joint["n_valid"], "fd": round(joint["fd"], 4),
                    "fd_interval": [round(joint["fd_lo"], 4), round(joint["fd_hi"], 4)],
                    "error_aware_fd": round(joint["error_aware"]["fd"], 4),
                    "holm_chi2_p": [float(p) for p in holm],
                    "kappa": {a: round(next(iter(v.values())), 4) for a, v in agreement.items()}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the math here is numpy)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metrics_speed.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = measure(args.samples, args.repeats)
    result["machine"] = {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                         "torch_threads": args.threads, "platform": platform.platform()}
    result["command"] = "OMP_NUM_THREADS=1 python benchmarks/metrics_speed.py"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
