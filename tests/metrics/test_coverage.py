"""Coverage of every interval diffaudit reports, by simulated audits with a known truth: per class,
all classes at once, FD, error-aware per class / all at once / FD, for K = 2, K = 4 and a joint
2 x 4 attribute.

Each test runs twice. The quick version (default run) simulates QUICK_REPS audits with fewer
bootstrap resamples; its acceptance band is the nominal 95% +- 3 binomial standard errors of a
coverage estimated from that many audits (0.912-0.988 at 300), so a correct interval fails it
with probability 0.3% while one covering 90% or less fails it almost surely; per-class
intervals are checked by their mean coverage over the classes (one check, not k). The full
version (`python -m pytest -m slow tests/metrics/test_coverage.py`) simulates 1,000 audits with
1,000 resamples and holds every interval, each class's included, to the project's bar, 93-97%
(about +-2.9 standard errors).
benchmarks/coverage.py runs the same kinds of scenarios through audit.metrics.cell.
"""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest
from statsmodels.stats.proportion import multinomial_proportions_confint

from audit.metrics import functional as F

QUICK_REPS, QUICK_RESAMPLES = 300, 500
FULL_REPS, FULL_RESAMPLES = 1000, 1000
NOMINAL = 0.95

CONFUSION2 = np.array([[0.85, 0.15], [0.15, 0.85]])
CONFUSION4 = np.array([[0.85, 0.10, 0.04, 0.01],
                       [0.05, 0.85, 0.08, 0.02],
                       [0.02, 0.03, 0.85, 0.10],
                       [0.10, 0.00, 0.05, 0.85]])
P2, P4 = np.array([0.3, 0.7]), np.array([0.4, 0.3, 0.2, 0.1])
UNIFORM2, UNIFORM4 = np.full(2, 0.5), np.full(4, 0.25)


def band(reps: int) -> tuple[float, float]:
    """Acceptance band for an estimated 95% coverage: the bar (93-97%) at full size, else the
    nominal level +- 3 binomial standard errors of a coverage estimated from `reps` audits."""
    if reps >= FULL_REPS:
        return 0.93, 0.97
    se = np.sqrt(NOMINAL * (1 - NOMINAL) / reps)
    return NOMINAL - 3 * se, NOMINAL + 3 * se


def sizes(full: bool) -> tuple[int, int]:
    return (FULL_REPS, FULL_RESAMPLES) if full else (QUICK_REPS, QUICK_RESAMPLES)


def check(name: str, coverage: float, reps: int) -> None:
    lo, hi = band(reps)
    print(f"{name}: coverage {coverage:.3f} over {reps} audits (band {lo:.3f}-{hi:.3f})")
    assert lo <= coverage <= hi, (name, coverage, (lo, hi))


def check_per_class(name: str, coverage: np.ndarray, reps: int, full: bool) -> None:
    if full:
        for c, value in enumerate(coverage):
            check(f"{name} class {c}", value, reps)
    else:
        check(f"{name} per class (mean of {coverage.size})", float(np.mean(coverage)), reps)


# --------------------------------------------------------------------------------------------
# Class proportions and FD of the labels themselves
# --------------------------------------------------------------------------------------------

PLAIN = {
    "k2-off": (P2, UNIFORM2, 500),
    "k2-on": (UNIFORM2, UNIFORM2, 500),
    "k4-off": (P4, UNIFORM4, 500),
    "k4-on": (UNIFORM4, UNIFORM4, 500),
    "k4-near": (UNIFORM4 + np.array([0.03, 0.0, 0.0, -0.03]), UNIFORM4, 500),   # FD 0.042, the noise level
    "k4-on-n100": (UNIFORM4, UNIFORM4, 100),
    "joint-2x4-off": (np.outer(P2, P4).ravel(), np.full(8, 1 / 8), 1000),
}


def plain_coverage(p, target, n, reps, resamples, seed=0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, p, size=reps)
    lo, hi = F.wilson_interval(counts, np.full(counts.shape, n))
    per_class = ((lo <= p) & (p <= hi)).mean(axis=0)
    simultaneous = np.mean([np.all((iv[:, 0] <= p) & (p <= iv[:, 1]))
                            for iv in (F.proportion_intervals(c, method="goodman") for c in counts)])
    true_fd = F.fairness_discrepancy(p, target)
    fd = np.array([F.fd_interval_from_counts(c, target, n_resamples=resamples, seed=i) for i, c in enumerate(counts)])
    return {"per class": per_class, "all at once": float(simultaneous),
            "FD": float(np.mean((fd[:, 0] <= true_fd) & (true_fd <= fd[:, 1])))}


def run_plain(name: str, full: bool) -> None:
    reps, resamples = sizes(full)
    p, target, n = PLAIN[name]
    result = plain_coverage(p, target, n, reps, resamples)
    check_per_class(name, result["per class"], reps, full)
    check(f"{name} all at once", result["all at once"], reps)
    check(f"{name} FD", result["FD"], reps)


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_intervals_cover(name):
    run_plain(name, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_intervals_cover_full(name):
    run_plain(name, full=True)


def test_goodman_is_statsmodels_and_two_classes_are_not_bonferroni():
    counts = np.array([50, 30, 15, 5])
    np.testing.assert_allclose(F.proportion_intervals(counts, method="goodman"),
                               multinomial_proportions_confint(counts, method="goodman"))
    two = np.array([40, 60])
    np.testing.assert_allclose(F.proportion_intervals(two, method="goodman"), F.proportion_intervals(two))


# --------------------------------------------------------------------------------------------
# Error-aware estimate: labeler 85% accurate, its confusion measured on 2,000 labelled samples
# per true class (per attribute for the joint one), 2,000 generated samples per audit
# --------------------------------------------------------------------------------------------

ERROR_AWARE = {
    "k2": ([P2], [CONFUSION2]),
    "k4": ([P4], [CONFUSION4]),
    "joint-2x4": ([P2, P4], [CONFUSION2, CONFUSION4]),
}
N_GENERATED, N_LABELLED = 2000, 2000


def error_aware_coverage(marginals, confusions, reps, resamples, seed=0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    p = reduce(np.multiply.outer, marginals).ravel()
    k = p.size
    target = np.full(k, 1 / k)
    C = F.joint_confusion(confusions)
    true_fd = F.fairness_discrepancy(p, target)
    per_class, simultaneous, fd = [], [], []
    for i in range(reps):
        # independent errors per attribute: the joint prediction of true joint class j is a draw of C[j]
        predicted = rng.multinomial(rng.multinomial(N_GENERATED, p), C).sum(axis=0)
        labelled = [rng.multinomial(N_LABELLED, c) for c in confusions]
        r = F.error_aware_interval(np.repeat(np.arange(k), predicted), labelled, k, n_resamples=resamples,
                                   seed=i + 1, target=target)
        per_class.append((r["lo"] <= p) & (p <= r["hi"]))
        simultaneous.append(np.all((r["lo_simultaneous"] <= p) & (p <= r["hi_simultaneous"])))
        fd.append(r["fd_lo"] <= true_fd <= r["fd_hi"])
    return {"per class": np.mean(per_class, axis=0), "all at once": float(np.mean(simultaneous)),
            "FD": float(np.mean(fd))}


def run_error_aware(name: str, full: bool) -> None:
    reps, resamples = sizes(full)
    result = error_aware_coverage(*ERROR_AWARE[name], reps, resamples)
    check_per_class(f"error-aware {name}", result["per class"], reps, full)
    check(f"error-aware {name} all at once", result["all at once"], reps)
    check(f"error-aware {name} FD", result["FD"], reps)


@pytest.mark.parametrize("name", list(ERROR_AWARE))
def test_error_aware_intervals_cover(name):
    run_error_aware(name, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ERROR_AWARE))
def test_error_aware_intervals_cover_full(name):
    run_error_aware(name, full=True)
