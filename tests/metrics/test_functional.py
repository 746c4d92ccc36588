"""Fairness statistics: known values against scipy and textbooks, and coverage by simulation.

The simulations are small (seconds) but large enough that a broken interval fails them: 1,000
simulated audits put the standard error of a 95% coverage at 0.7 percentage points.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import special, stats

from audit.metrics import functional as F

UNIFORM2 = np.array([0.5, 0.5])
UNIFORM4 = np.full(4, 0.25)


# --------------------------------------------------------------------------------------------
# Proportions and distances
# --------------------------------------------------------------------------------------------


def test_proportions_hard_and_soft_use_only_valid_samples():
    labels = np.array([0, 1, 1, 2, 0, 1])
    valid = np.array([True, True, True, True, False, False])
    np.testing.assert_allclose(F.proportions(labels, 3), [2 / 6, 3 / 6, 1 / 6])
    np.testing.assert_allclose(F.proportions(labels, 3, valid), [1 / 4, 2 / 4, 1 / 4])
    assert np.isnan(F.proportions(labels, 3, np.zeros(6, bool))).all()
    with pytest.raises(ValueError):
        F.proportions(labels, 2)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    np.testing.assert_allclose(F.soft_proportions(probs), [1.6 / 3, 1.4 / 3])
    np.testing.assert_allclose(F.soft_proportions(probs, np.array([True, True, False])), [0.55, 0.45])


def test_fairness_discrepancy_is_l2_distance():
    assert F.fairness_discrepancy([0.3, 0.7], UNIFORM2) == pytest.approx(np.sqrt(0.08))
    assert F.fairness_discrepancy(UNIFORM4, UNIFORM4) == 0.0


def test_kl_matches_scipy_entropy_and_hand_formula():
    p, q = np.array([0.1, 0.6, 0.3]), np.array([0.3, 0.3, 0.4])
    by_hand = np.sum(p * np.log(p / q))
    assert F.kl_divergence(p, q, eps=0) == pytest.approx(by_hand)
    assert F.kl_divergence(p, q, eps=0) == pytest.approx(stats.entropy(p, q))
    assert F.kl_divergence(p, q, eps=1e-3) == pytest.approx(stats.entropy(p + 1e-3, q + 1e-3))
    assert F.kl_to_target(p, q) == pytest.approx(stats.entropy(p + 1e-6, q + 1e-6))
    assert F.kl_to_target(p, q, direction="reverse") == pytest.approx(stats.entropy(q + 1e-6, p + 1e-6))
    missing = np.array([1.0, 0.0])      # a class never generated: finite thanks to smoothing
    assert np.isfinite(F.kl_to_target(missing, UNIFORM2, direction="reverse"))
    with pytest.raises(ValueError):
        F.kl_to_target(p, q, direction="sideways")


# --------------------------------------------------------------------------------------------
# Tests and intervals for proportions
# --------------------------------------------------------------------------------------------


def test_chi_square_matches_scipy():
    counts, target = np.array([30, 50, 20]), np.array([0.3, 0.4, 0.3])
    expected = stats.chisquare(counts, 100 * target)
    statistic, p = F.chi_square_gof(counts, target)
    assert statistic == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)


def test_chi_square_handles_zero_target_classes():
    # A class the target forbids: no samples in it -> tested on the others; any -> violation.
    statistic, p = F.chi_square_gof([40, 60, 0], [0.5, 0.5, 0.0])
    expected = stats.chisquare([40, 60], [50, 50])
    assert (statistic, p) == pytest.approx((expected.statistic, expected.pvalue))
    assert F.chi_square_gof([40, 59, 1], [0.5, 0.5, 0.0]) == (float("inf"), 0.0)
    assert np.isnan(F.chi_square_gof([0, 0], UNIFORM2)[1])


def test_wilson_textbook_value_and_vectorised():
    lo, hi = F.wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    lo, hi = F.wilson_interval(np.array([0, 8, 10]), np.array([10, 10, 10]))
    assert lo[0] == 0.0 and hi[2] == 1.0 and lo[1] == pytest.approx(0.4902, abs=1e-4)
    assert F.wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_coverage_in_simulated_audits():
    rng = np.random.default_rng(0)
    successes = rng.binomial(500, 0.3, size=1000)
    lo, hi = F.wilson_interval(successes, 500)
    coverage = np.mean((lo <= 0.3) & (hi >= 0.3))
    print(f"Wilson coverage: {coverage:.3f}")
    assert 0.93 <= coverage <= 0.97, coverage


def test_proportion_intervals_wilson_and_goodman():
    counts = np.array([50, 30, 15, 5])
    wilson = F.proportion_intervals(counts)
    assert wilson.shape == (4, 2)
    np.testing.assert_allclose(wilson[1], F.wilson_interval(30, 100))
    goodman = F.proportion_intervals(counts, method="goodman")
    # Goodman (1965): (A + 2 n_i -+ sqrt(A (A + 4 n_i (N - n_i) / N))) / (2 (N + A)), A = chi2_1(1 - a/k)
    A = stats.chi2.ppf(1 - 0.05 / 4, 1)
    root = np.sqrt(A * (A + 4 * counts * (100 - counts) / 100))
    by_hand = np.stack([A + 2 * counts - root, A + 2 * counts + root], axis=1) / (2 * (100 + A))
    np.testing.assert_allclose(goodman, by_hand)
    assert np.all(goodman[:, 0] <= wilson[:, 0]) and np.all(goodman[:, 1] >= wilson[:, 1])


def test_goodman_intervals_hold_simultaneously():
    rng = np.random.default_rng(1)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    all_covered = [np.all((iv[:, 0] <= p) & (p <= iv[:, 1]))
                   for iv in (F.proportion_intervals(c, method="goodman")
                              for c in rng.multinomial(500, p, size=500))]
    assert np.mean(all_covered) >= 0.94


def test_bootstrap_interval_generic_statistic():
    rng = np.random.default_rng(2)
    labels = (rng.random(400) < 0.3).astype(int)
    lo, hi = F.bootstrap_interval(lambda x: x.mean(), labels, n_resamples=400, seed=0)
    wilson = F.wilson_interval(labels.sum(), labels.size)
    assert lo < labels.mean() < hi
    assert (lo, hi) == pytest.approx(wilson, abs=0.015)
    same_seed = [F.bootstrap_interval(np.mean, labels, 50, seed=3) for _ in range(2)]
    assert same_seed[0] == same_seed[1]


def test_fd_interval_basics():
    labels = np.repeat([0, 1, 2, 3], [200, 100, 100, 100])
    fd = F.fairness_discrepancy(F.proportions(labels, 4), UNIFORM4)
    lo, hi = F.bootstrap_fd_interval(labels, 4, UNIFORM4, n_resamples=500)
    assert 0 < lo < fd < hi
    # valid masks samples out; labels of invalid samples are ignored, even out of range
    padded = np.concatenate([labels, [9, 9]])
    valid = np.concatenate([np.ones(500, bool), [False, False]])
    assert F.bootstrap_fd_interval(padded, 4, UNIFORM4, n_resamples=500, valid=valid) == (lo, hi)
    # exactly on target: lo = 0 and hi is not degenerate
    lo, hi = F.bootstrap_fd_interval(np.repeat([0, 1], 250), 2, UNIFORM2, n_resamples=500)
    assert lo == 0.0 and 0.03 < hi < 0.1
    assert np.isnan(F.bootstrap_fd_interval(np.array([], int), 2, UNIFORM2)).all()


def _fd_coverage(p: np.ndarray, target: np.ndarray, audits: int = 1000, n: int = 500, seed: int = 0) -> float:
    """Fraction of simulated audits whose 95% FD interval contains the true FD."""
    rng = np.random.default_rng(seed)
    true_fd = F.fairness_discrepancy(p, target)
    intervals = np.array([F.fd_interval_from_counts(c, target, n_resamples=200, seed=i)
                          for i, c in enumerate(rng.multinomial(n, p, size=audits))])
    return float(np.mean((intervals[:, 0] <= true_fd) & (true_fd <= intervals[:, 1])))


@pytest.mark.parametrize(("p", "target"), [
    (np.array([0.3, 0.7]), UNIFORM2),
    (np.array([0.4, 0.3, 0.2, 0.1]), UNIFORM4),
], ids=["k2", "k4"])
def test_fd_interval_coverage_off_target(p, target):
    coverage = _fd_coverage(p, target)
    print(f"FD interval coverage off target (FD = {F.fairness_discrepancy(p, target):.3f}): {coverage:.3f}")
    assert 0.93 <= coverage <= 0.97, coverage


@pytest.mark.parametrize(("p", "target"), [
    (UNIFORM2, UNIFORM2),
    (UNIFORM4, UNIFORM4),
    (UNIFORM4 + np.array([0.03, 0.0, 0.0, -0.03]), UNIFORM4),   # FD 0.042, about the noise level
], ids=["k2", "k4", "k4-near"])
def test_fd_interval_coverage_on_and_near_target(p, target):
    # At FD = 0 only the lower end can miss, so an equal-tailed 95% interval covers with 97.5%
    # (see bootstrap_fd_interval); below the noise level coverage stays between 95% and 97.5%.
    coverage = _fd_coverage(p, target)
    print(f"FD interval coverage at FD = {F.fairness_discrepancy(p, target):.3f}: {coverage:.3f}")
    assert 0.93 <= coverage <= 0.99, coverage


def test_tost_equivalence():
    at_target = F.tost_equivalence(np.array([2480, 2520]), UNIFORM2, epsilon=0.05)
    assert at_target["equivalent"] and at_target["p_value"] < 1e-6
    assert at_target["p_values"].shape == (2,) and at_target["p_value"] == at_target["p_values"].max()
    off = F.tost_equivalence(np.array([3500, 1500]), UNIFORM2, epsilon=0.05)   # p = 0.7, 0.2 away
    assert not off["equivalent"] and off["p_value"] > 0.5
    # one class off is enough to fail the intersection-union test
    mixed = F.tost_equivalence(np.array([1250, 1250, 2250, 250]), UNIFORM4, epsilon=0.05)
    assert not mixed["equivalent"] and mixed["p_values"][:2].max() < 0.05
    # a class whose tolerance band reaches 0 (target 0.02, epsilon 0.05) is tested on one side only
    small = F.tost_equivalence(np.array([4900, 100]), np.array([0.98, 0.02]), epsilon=0.05)
    assert small["equivalent"]
    assert not F.tost_equivalence(np.zeros(2, int), UNIFORM2, epsilon=0.05)["equivalent"]


def test_adjust_pvalues_known_example():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(F.adjust_pvalues(p, "bonferroni"), [0.04, 0.16, 0.12, 0.02])
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(F.adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4 -> 0.02, 0.02, 0.04, 0.04 -> running min from the top
    np.testing.assert_allclose(F.adjust_pvalues(p, "fdr_bh"), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(F.adjust_pvalues([0.5, 0.9], "holm"), [1.0, 1.0])
    with pytest.raises(ValueError):
        F.adjust_pvalues(p, "sidak")


# --------------------------------------------------------------------------------------------
# Joint attributes, agreement, validity
# --------------------------------------------------------------------------------------------


def test_joint_labels_and_target_share_one_order():
    gender, age = np.array([0, 0, 1, 1, 1]), np.array([0, 2, 1, 2, 0])
    joint, k = F.joint_labels([gender, age], [2, 3])
    assert k == 6 and joint.tolist() == [0, 2, 4, 5, 3]
    target = F.joint_target([[0.5, 0.5], [0.2, 0.3, 0.5]])
    assert target.sum() == pytest.approx(1.0)
    # joint index g * 3 + a carries target_g * target_a
    np.testing.assert_allclose(target, [0.1, 0.15, 0.25, 0.1, 0.15, 0.25])
    # and proportions of the joint labels factor the same way
    rng = np.random.default_rng(3)
    g, a = rng.integers(0, 2, 20000), rng.integers(0, 3, 20000)
    p = F.proportions(F.joint_labels([g, a], [2, 3])[0], 6)
    np.testing.assert_allclose(p, F.joint_target([F.proportions(g, 2), F.proportions(a, 3)]), atol=0.01)


def test_intersectional_table_flags_small_cells():
    gender = np.repeat([0, 1], [100, 100])
    age = np.concatenate([np.repeat([0, 1], [90, 10]), np.repeat([0, 1], [50, 50])])
    table = F.intersectional_table([gender, age], [2, 2], min_count=30)
    assert table["counts"].tolist() == [90, 10, 50, 50]
    np.testing.assert_allclose(table["proportions"], [0.45, 0.05, 0.25, 0.25])
    assert table["small_cells"] == [1] and table["k"] == 4


def _kappa_sklearn_formula(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """sklearn.metrics.cohen_kappa_score's computation, written out (sklearn is not installed)."""
    confusion = np.zeros((k, k))
    np.add.at(confusion, (a, b), 1)
    expected = np.outer(confusion.sum(1), confusion.sum(0)) / confusion.sum()
    weights = 1 - np.eye(k)
    return 1 - np.sum(weights * confusion) / np.sum(weights * expected)


def test_cohens_kappa():
    # Textbook 2x2 example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> kappa 0.4
    a = np.repeat([0, 0, 1, 1], [20, 5, 10, 15])
    b = np.repeat([0, 1, 0, 1], [20, 5, 10, 15])
    assert F.cohens_kappa(a, b, 2) == pytest.approx(0.4)
    rng = np.random.default_rng(4)
    a = rng.integers(0, 4, 300)
    b = np.where(rng.random(300) < 0.7, a, rng.integers(0, 4, 300))
    assert F.cohens_kappa(a, b, 4) == pytest.approx(_kappa_sklearn_formula(a, b, 4))
    assert F.cohens_kappa(a, a, 4) == pytest.approx(1.0)


def test_invalid_rate():
    assert F.invalid_rate(np.array([True, False, True, True])) == 0.25
    assert np.isnan(F.invalid_rate(np.array([], bool)))


# --------------------------------------------------------------------------------------------
# Error-aware estimation
# --------------------------------------------------------------------------------------------

CONFUSION2 = np.array([[0.85, 0.15], [0.15, 0.85]])
P2 = np.array([0.3, 0.7])
# 85% accurate, errors not symmetric (class 3 is mistaken for class 0, never the reverse as often)
CONFUSION4 = np.array([[0.85, 0.10, 0.04, 0.01],
                       [0.05, 0.85, 0.08, 0.02],
                       [0.02, 0.03, 0.85, 0.10],
                       [0.10, 0.00, 0.05, 0.85]])
P4 = np.array([0.4, 0.3, 0.2, 0.1])


def test_confusion_and_exact_inversion():
    C = F.confusion_from_counts(np.array([[85, 15], [30, 170]]))
    np.testing.assert_allclose(C, [[0.85, 0.15], [0.15, 0.85]])
    with pytest.raises(ValueError):
        F.confusion_from_counts(np.array([[5, 5], [0, 0]]))
    q = CONFUSION4.T @ P4
    for method in ("lsq", "em"):
        np.testing.assert_allclose(F.error_aware_estimate(q, CONFUSION4, method=method), P4, atol=1e-6)
    # q outside the labeler's reach (q = (0, 1) needs p_0 < 0): the answer stays on the simplex
    p = F.error_aware_estimate(np.array([0.0, 1.0]), CONFUSION2)
    assert p.min() >= 0 and p.sum() == pytest.approx(1.0) and p[1] == pytest.approx(1.0)


def test_joint_confusion_matches_joint_label_order():
    C1, C2 = CONFUSION2, CONFUSION4[:3, :3] / CONFUSION4[:3, :3].sum(1, keepdims=True)
    joint = F.joint_confusion([C1, C2])
    assert joint.shape == (6, 6)
    np.testing.assert_allclose(joint.sum(1), 1.0)
    i = F.joint_labels([np.array([1]), np.array([2])], [2, 3])[0][0]
    j = F.joint_labels([np.array([0]), np.array([1])], [2, 3])[0][0]
    assert joint[i, j] == pytest.approx(C1[1, 0] * C2[2, 1])


def test_error_aware_interval_is_fast():
    rng = np.random.default_rng(5)
    pred = rng.integers(0, 4, 2000)
    confusion_counts = np.round(CONFUSION4 * 2000).astype(int)
    start = time.perf_counter()
    result = F.error_aware_interval(pred, confusion_counts, 4, n_resamples=500)
    assert time.perf_counter() - start < 1.0
    assert np.all(result["lo"] <= result["p"]) and np.all(result["p"] <= result["hi"])
    assert result["n"] == 2000


@pytest.mark.parametrize(("p", "C"), [(P2, CONFUSION2), (P4, CONFUSION4)], ids=["binary", "4-class"])
def test_error_aware_removes_labeler_bias(p, C):
    """200 simulated audits: n = 2000 generated samples, C measured on 2000 labelled samples per class."""
    rng = np.random.default_rng(6)
    k = len(p)
    naive, corrected, covered = [], [], []
    for i in range(200):
        confusion_counts = rng.multinomial(2000, C)                        # rows: true class
        predicted = rng.multinomial(rng.multinomial(2000, p), C).sum(0)     # labeler output counts
        result = F.error_aware_interval(np.repeat(np.arange(k), predicted), confusion_counts, k,
                                        n_resamples=200, seed=i)
        naive.append(predicted / 2000)
        corrected.append(result["p"])
        covered.append((result["lo"] <= p) & (p <= result["hi"]))
    naive_bias = np.linalg.norm(np.mean(naive, 0) - p)
    corrected_bias = np.linalg.norm(np.mean(corrected, 0) - p)
    removed = 1 - corrected_bias / naive_bias
    coverage = np.mean(covered, 0)
    print(f"bias naive {naive_bias:.4f} -> error-aware {corrected_bias:.4f} ({removed:.1%} removed); "
          f"per-class coverage {np.round(coverage, 3).tolist()}")
    assert removed >= 0.8
    assert np.all(coverage >= 0.90), coverage


# --------------------------------------------------------------------------------------------
# Library agreement (the wrappers add only edge cases)
# --------------------------------------------------------------------------------------------


def test_wilson_is_statsmodels_and_bootstrap_is_scipy():
    from statsmodels.stats.proportion import proportion_confint

    x, n = np.array([1, 7, 30, 99]), np.array([10, 50, 60, 100])
    np.testing.assert_allclose(np.stack(F.wilson_interval(x, n)), np.stack(proportion_confint(x, n, method="wilson")))
    labels = (np.random.default_rng(7).random(200) < 0.4).astype(int)
    expected = stats.bootstrap((labels,), np.mean, n_resamples=300, vectorized=False, method="percentile",
                               rng=np.random.default_rng(1)).confidence_interval
    assert F.bootstrap_interval(np.mean, labels, 300, seed=1) == pytest.approx((expected.low, expected.high))


def test_adjust_pvalues_and_kappa_are_statsmodels():
    from statsmodels.stats.inter_rater import cohens_kappa
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(8).random(12) / 5
    for method in ("holm", "bonferroni", "fdr_bh"):
        np.testing.assert_allclose(F.adjust_pvalues(p, method), multipletests(p, method=method)[1])
    a = np.repeat([0, 0, 1, 1], [20, 5, 10, 15])
    b = np.repeat([0, 1, 0, 1], [20, 5, 10, 15])
    assert F.cohens_kappa(a, b, 2) == pytest.approx(cohens_kappa(np.array([[20, 5], [10, 15]]), return_results=False))
    assert np.isnan(F.cohens_kappa(np.zeros(5, int), np.zeros(5, int), 2))


def test_tost_matches_statsmodels_binom_tost_inside_the_unit_interval():
    from statsmodels.stats.proportion import binom_tost

    counts, target = np.array([230, 270, 250, 250]), UNIFORM4
    ours = F.tost_equivalence(counts, target, epsilon=0.05)["p_values"]
    theirs = [binom_tost(x, 1000, t - 0.05, t + 0.05)[0] for x, t in zip(counts, target, strict=True)]
    np.testing.assert_allclose(ours, theirs)


def test_minimum_effect_holm_shortcut_is_statsmodels_holm():
    """The family p-value (the smallest Holm-adjusted class p, computed directly) equals multipletests'."""
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(21)
    for counts in rng.multinomial(200, [0.4, 0.3, 0.2, 0.1], size=20):
        result = F.minimum_effect_test(counts, UNIFORM4, 0.05)
        assert result["p_value"] == pytest.approx(multipletests(result["p_values"], method="holm")[1].min())


@pytest.mark.parametrize("p", [0.5, 0.52, 0.47])
def test_samples_needed_inside_the_band_has_the_planned_power_by_statsmodels(p):
    """At the n it names, statsmodels' exact TOST power (power_binom_tost) is the planned 80%, up to
    the saw-tooth of the exact test."""
    from statsmodels.stats.proportion import power_binom_tost

    n = F.sample_size_to_decide(np.array([p, 1 - p]), UNIFORM2, 0.05)
    assert 0.75 <= power_binom_tost(0.45, 0.55, n, p_alt=p, alpha=0.05) <= 0.85


def test_error_aware_interval_of_a_perfect_labeler_is_scipys_percentile_bootstrap():
    """With an error-free labeler (identity confusion) the error-aware intervals are the percentile
    bootstrap of the class shares: scipy.stats.bootstrap's, up to Monte Carlo error."""
    labels = np.repeat(np.arange(3), [500, 300, 200])
    ours = F.error_aware_interval(labels, np.diag([10**6] * 3), 3, n_resamples=4000, seed=3)
    for c in range(3):
        theirs = stats.bootstrap((labels == c,), np.mean, n_resamples=4000, method="percentile",
                                 rng=np.random.default_rng(4)).confidence_interval
        assert ours["lo"][c] == pytest.approx(theirs.low, abs=0.006)
        assert ours["hi"][c] == pytest.approx(theirs.high, abs=0.006)


# --------------------------------------------------------------------------------------------
# Goodness of fit with a small-sample guard
# --------------------------------------------------------------------------------------------


def _exact_multinomial_by_enumeration(counts, target) -> float:
    """Probability-ordered exact multinomial p-value, by brute force over every outcome."""
    import itertools

    n, k = int(sum(counts)), len(counts)
    outcomes = [c for c in itertools.product(range(n + 1), repeat=k) if sum(c) == n]
    pmf = np.array([stats.multinomial.pmf(c, n, target) for c in outcomes])
    observed = stats.multinomial.pmf(counts, n, target)
    return float(pmf[pmf <= observed * (1 + 1e-9)].sum())


def test_gof_is_exact_when_expected_counts_are_small():
    # Pearson's chi-square gives 0.079 here; the exact test (the outcome and every less probable one) 0.167
    result = F.multinomial_gof([1, 2, 6, 1], UNIFORM4)
    assert result["method"] == "exact"
    assert result["p_value"] == pytest.approx(_exact_multinomial_by_enumeration([1, 2, 6, 1], UNIFORM4))
    assert result["p_value"] == pytest.approx(0.1669, abs=1e-4)
    assert result["statistic"] == pytest.approx(stats.chisquare([1, 2, 6, 1]).statistic)
    target = np.array([0.5, 0.3, 0.2])
    assert F.multinomial_gof([4, 0, 3], target)["p_value"] == pytest.approx(
        _exact_multinomial_by_enumeration([4, 0, 3], target))
    # large expected counts: scipy's chi-square, unchanged
    big = F.multinomial_gof([30, 50, 20], [0.3, 0.4, 0.3])
    assert big["method"] == "asymptotic"
    assert big["p_value"] == pytest.approx(stats.chisquare([30, 50, 20], [30, 40, 30]).pvalue)
    # zero-target classes as chi_square_gof: a sample in one is a violation
    assert F.multinomial_gof([3, 2, 1], [0.5, 0.5, 0.0]) == {"statistic": float("inf"), "p_value": 0.0,
                                                              "method": "exact"}
    assert F.multinomial_gof([0, 0], UNIFORM2)["method"] is None


def test_gof_monte_carlo_agrees_with_exact_when_outcomes_are_too_many():
    counts, target = np.array([5, 1, 2, 4, 0, 3, 2, 3]), np.full(8, 1 / 8)     # 20 samples, 888,030 outcomes
    mc = F.multinomial_gof(counts, target)
    exact = F.multinomial_gof(counts, target, max_outcomes=10**6)
    assert mc["method"] == "monte_carlo" and exact["method"] == "exact"
    se = np.sqrt(exact["p_value"] * (1 - exact["p_value"]) / 100_000)
    assert abs(mc["p_value"] - exact["p_value"]) < 4 * se


def test_gof_holds_its_level_at_small_n():
    """Under the target, n = 10 over 4 classes: the exact test rejects at most 5% of the time."""
    rng = np.random.default_rng(9)
    p = np.array([F.multinomial_gof(c, UNIFORM4)["p_value"] for c in rng.multinomial(10, UNIFORM4, size=1000)])
    assert np.mean(p < 0.05) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 1000)


def test_compositions_enumerate_every_outcome_once():
    rows = F._compositions(6, 4)
    assert rows.shape == (84, 4) and np.all(rows.sum(1) == 6) and np.all(rows >= 0)
    assert len({tuple(r) for r in rows}) == 84


# --------------------------------------------------------------------------------------------
# The FD noise floor and the bias-corrected FD
# --------------------------------------------------------------------------------------------


def test_fd_noise_floor_matches_theory():
    mean, q95 = F.fd_noise_floor(100, UNIFORM4)
    assert mean == pytest.approx(0.080, abs=0.002)        # E[FD] on target, K = 4, n = 100
    # large n: n K FD^2 is chi-square(K - 1) for a uniform target
    n, k = 20_000, 4
    mean, q95 = F.fd_noise_floor(n, UNIFORM4)
    chi_mean = np.sqrt(2 / (n * k)) * np.exp(special.gammaln(k / 2) - special.gammaln((k - 1) / 2))
    assert mean == pytest.approx(chi_mean, rel=0.01)
    assert q95 == pytest.approx(np.sqrt(stats.chi2.ppf(0.95, k - 1) / (n * k)), rel=0.01)
    # any target: E[FD^2] = (1 - sum t^2) / n, and the floor shrinks like 1 / sqrt(n)
    target = np.array([0.6, 0.3, 0.1])
    rng = np.random.default_rng(10)
    fd2 = np.sum((rng.multinomial(400, target, size=50_000) / 400 - target) ** 2, axis=1)
    assert fd2.mean() == pytest.approx((1 - np.sum(target**2)) / 400, rel=0.02)
    assert F.fd_noise_floor(400, target)[0] == pytest.approx(2 * F.fd_noise_floor(1600, target)[0], rel=0.03)
    assert np.isnan(F.fd_noise_floor(0, target)).all()


def test_within_noise_flags_five_percent_of_on_target_audits():
    rng = np.random.default_rng(11)
    _, q95 = F.fd_noise_floor(200, UNIFORM4)
    fd = np.linalg.norm(rng.multinomial(200, UNIFORM4, size=4000) / 200 - UNIFORM4, axis=1)
    assert np.mean(fd > q95) == pytest.approx(0.05, abs=0.012)


def test_fd_bias_corrected():
    counts, target = np.array([60, 25, 15]), np.array([0.5, 0.3, 0.2])
    p_hat = counts / 100
    by_hand = np.sqrt(np.sum((p_hat - target) ** 2) - np.sum(p_hat * (1 - p_hat)) / 99)
    assert F.fd_bias_corrected(counts, target) == pytest.approx(by_hand)
    assert F.fd_bias_corrected([50, 50], UNIFORM2) == 0.0
    assert np.isnan(F.fd_bias_corrected([1, 0], UNIFORM2))
    # the squared correction is unbiased for FD^2; the raw FD^2 is not, and depends on n
    p = np.array([0.35, 0.3, 0.2, 0.15])
    rng = np.random.default_rng(12)
    for n in (30, 300):
        p_hats = rng.multinomial(n, p, size=100_000) / n
        raw = np.sum((p_hats - UNIFORM4) ** 2, axis=1)
        corrected = raw - np.sum(p_hats * (1 - p_hats), axis=1) / (n - 1)
        truth = np.sum((p - UNIFORM4) ** 2)
        assert corrected.mean() == pytest.approx(truth, rel=0.02)
        assert raw.mean() == pytest.approx(truth + np.sum(p * (1 - p)) / n, rel=0.02)


# --------------------------------------------------------------------------------------------
# Verdicts: on target, off target, inconclusive with the samples needed
# --------------------------------------------------------------------------------------------


def test_verdict_three_states():
    assert F.fairness_verdict([5000, 5000], UNIFORM2, 0.05)["verdict"] == "on_target"
    off = F.fairness_verdict([7000, 3000], UNIFORM2, 0.05)
    assert off["verdict"] == "off_target" and off["n_needed"] is None and off["off_target_p"] < 1e-10
    # the quickstart's FD 0.000 cell: 64 samples cannot show "within 0.05"
    for counts, target in (([32, 32], UNIFORM2), ([16, 16, 16, 16], UNIFORM4), ([8] * 8, np.full(8, 1 / 8))):
        v = F.fairness_verdict(counts, target, 0.05)
        assert v["verdict"] == "inconclusive" and v["n_needed"] > 64, (counts, v)
    # off by more than epsilon but not significantly: inconclusive, with the n that would show it
    v = F.fairness_verdict([40, 24], UNIFORM2, 0.05)                 # 0.625 vs 0.5 +- 0.05
    assert v["verdict"] == "inconclusive" and 64 < v["n_needed"] < 2000
    assert F.fairness_verdict([0, 0], UNIFORM2, 0.05) == {"tost_p": 1.0, "off_target_p": 1.0, "n_needed": None,
                                                         "verdict": "inconclusive"}


def test_minimum_effect_test_holds_its_level_at_the_band_edge():
    """A distribution exactly epsilon off target is not off target: declared so <= 5% of the time."""
    rng = np.random.default_rng(13)
    p = np.array([0.3, 0.25, 0.25, 0.2])        # class 0 is 0.05 above, class 3 0.05 below the target
    off = [F.minimum_effect_test(c, UNIFORM4, 0.05)["off_target"] for c in rng.multinomial(300, p, size=600)]
    assert np.mean(off) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 600)


def test_on_and_off_target_never_both():
    rng = np.random.default_rng(14)
    for counts in rng.multinomial(80, [0.4, 0.3, 0.2, 0.1], size=300):
        tost = F.tost_equivalence(counts, UNIFORM4, 0.05, 0.4)            # even at a lax level
        effect = F.minimum_effect_test(counts, UNIFORM4, 0.05, 0.4)
        assert not (tost["equivalent"] and effect["off_target"])


@pytest.mark.parametrize(("p", "target"), [
    (np.array([0.5, 0.5]), UNIFORM2),                       # on target: TOST must show it
    (np.array([0.27, 0.25, 0.25, 0.23]), UNIFORM4),         # inside the band
    (np.array([0.58, 0.42]), UNIFORM2),                     # 0.08 off with epsilon 0.05: shown off target
    (np.array([0.35, 0.25, 0.2, 0.2]), UNIFORM4),
], ids=["k2-on", "k4-inside", "k2-off", "k4-off"])
def test_n_needed_reaches_the_verdict_with_the_planned_power(p, target):
    """At n_needed the verdict the truth deserves comes out in >= 75% of simulated audits (80%
    planned, from a normal approximation with a Bonferroni bound) and at half of it in fewer."""
    n = F.sample_size_to_decide(p, target, 0.05)
    expected = "on_target" if np.abs(p - target).max() < 0.05 else "off_target"
    rng = np.random.default_rng(15)

    def power(size):
        return np.mean([F.fairness_verdict(c, target, 0.05)["verdict"] == expected
                        for c in rng.multinomial(size, p, size=300)])

    at_n, at_half = power(n), power(n // 2)
    print(f"n_needed {n}: power {at_n:.2f}, at n / 2 {at_half:.2f}")
    assert at_n >= 0.75 and at_half < at_n


def test_n_needed_edge_cases():
    assert F.sample_size_to_decide(np.array([0.55, 0.45]), UNIFORM2, 0.05) is None      # on the band's edge
    one_class_zero = F.sample_size_to_decide(np.array([0.0, 1.0]), np.array([0.02, 0.98]), 0.05)
    assert isinstance(one_class_zero, int) and one_class_zero > 0


# --------------------------------------------------------------------------------------------
# Error-aware: per-attribute confusion resampling, simultaneous band, FD interval
# --------------------------------------------------------------------------------------------


def test_error_aware_joint_takes_per_attribute_confusions():
    rng = np.random.default_rng(16)
    counts2, counts4 = rng.multinomial(500, CONFUSION2), rng.multinomial(300, CONFUSION4)
    C = F.joint_confusion([F.confusion_from_counts(counts2), F.confusion_from_counts(counts4)])
    p = np.outer(P2, P4).ravel()
    predicted = rng.multinomial(rng.multinomial(3000, p), C).sum(0)
    labels = np.repeat(np.arange(8), predicted)
    result = F.error_aware_interval(labels, [counts2, counts4], 8, n_resamples=300, target=np.full(8, 1 / 8))
    np.testing.assert_allclose(result["p"], F.error_aware_estimate(predicted / 3000, C), atol=1e-9)
    assert np.all(result["lo_simultaneous"] <= result["lo"] + 1e-12)
    assert np.all(result["hi"] <= result["hi_simultaneous"] + 1e-12)
    assert result["fd_lo"] <= result["fd"] <= result["fd_hi"]
    # the shipped bug: fake joint counts (rows scaled to the largest row total times the grand total)
    # claim several times the labelled images there are, so their interval is too narrow
    totals = np.outer(counts2.sum(1), counts4.sum(1)).ravel()
    fake = np.round(C * (totals / totals.max() * counts2.sum())[:, None]).astype(int)
    narrow = F.error_aware_interval(labels, fake, 8, n_resamples=300)
    assert np.mean(narrow["hi"] - narrow["lo"]) < 0.9 * np.mean(result["hi"] - result["lo"])
    # a single attribute: the plain matrix and a one-element list are the same thing
    single = [F.error_aware_interval(labels % 4, c, 4, n_resamples=100) for c in (counts4, [counts4])]
    np.testing.assert_array_equal(single[0]["lo"], single[1]["lo"])
    with pytest.raises(ValueError):
        F.error_aware_interval(labels, [counts2, counts2], 8)
    empty = F.error_aware_interval(np.array([], int), counts4, 4, target=UNIFORM4)
    assert empty["n"] == 0 and np.isnan(empty["fd_lo"])


def test_sup_t_band_holds_all_at_once():
    rng = np.random.default_rng(17)
    cov = np.array([[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]]) * 1e-4
    draws = rng.multivariate_normal(np.full(3, 0.3), cov, size=4000)
    lo, hi = F.sup_t_band(draws, np.full(3, 0.3))
    fresh = rng.multivariate_normal(np.full(3, 0.3), cov, size=4000)
    assert np.mean(np.all((lo <= fresh) & (fresh <= hi), axis=1)) == pytest.approx(0.95, abs=0.01)
    # two complementary classes: the band is the per-class normal interval, no Bonferroni price
    x = rng.normal(0.3, 0.01, 4000)
    lo, hi = F.sup_t_band(np.stack([x, 1 - x], axis=1), np.array([0.3, 0.7]))
    assert hi[0] - lo[0] == pytest.approx(2 * 1.96 * x.std(), rel=0.03)


def test_literature_metrics_by_their_published_definitions():
    from scipy.stats import entropy

    # two classes: HEIM's |female share - 0.5|, Chuang et al.'s deviation ratio, OpenBias' entropy
    p = np.array([0.8, 0.2])
    assert F.mean_absolute_imbalance(p) == pytest.approx(0.3)
    assert F.deviation_ratio(p) == pytest.approx(0.3 / 0.5)
    assert F.normalized_entropy(p) == pytest.approx(entropy(p, base=2))
    # balanced and degenerate ends, four classes
    assert F.mean_absolute_imbalance(np.full(4, 0.25)) == 0 and F.deviation_ratio(np.full(4, 0.25)) == 0
    assert F.normalized_entropy(np.full(4, 0.25)) == pytest.approx(1.0)
    one = np.array([1.0, 0, 0, 0])
    assert F.deviation_ratio(one) == pytest.approx(1.0) and F.normalized_entropy(one) == pytest.approx(0.0)
    assert F.mean_absolute_imbalance(one) == pytest.approx((0.75 + 3 * 0.25) / 4)
