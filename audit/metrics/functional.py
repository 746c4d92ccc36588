"""Fairness statistics as pure functions on numpy arrays (no torch, no state).

Everything here works on class labels, counts or proportion vectors of one (possibly joint)
attribute. The streaming and per-cell wrappers beside this module only gather the arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce

import numpy as np
from scipy import optimize, special, stats
from statsmodels.stats.inter_rater import cohens_kappa as _sm_cohens_kappa
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import multinomial_proportions_confint, proportion_confint

# --------------------------------------------------------------------------------------------
# Proportions and distances to the target
# --------------------------------------------------------------------------------------------


def _valid_subset(x: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """The rows of x whose sample is valid (a face was found, the labeler answered)."""
    if valid is None:
        return x
    valid = np.asarray(valid, dtype=bool)
    if valid.shape[0] != x.shape[0]:
        raise ValueError(f"valid has {valid.shape[0]} entries for {x.shape[0]} samples")
    return x[valid]


def proportions(labels: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Hard class proportions p_hat of the valid samples: the audit's headline estimate.

    Returns NaNs when no sample is valid, so an empty cell can never pass as fair.
    """
    labels = _valid_subset(np.asarray(labels).astype(int, copy=False), valid)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}); got [{labels.min()}, {labels.max()}]")
    if labels.size == 0:
        return np.full(k, np.nan)
    return np.bincount(labels, minlength=k) / labels.size


def soft_proportions(probs: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Mean labeler probability per class: less sensitive to borderline samples than argmax."""
    probs = _valid_subset(np.asarray(probs, dtype=float), valid)
    if probs.shape[0] == 0:
        return np.full(probs.shape[1], np.nan)
    return probs.mean(axis=0)


def fairness_discrepancy(p_hat: np.ndarray, target: np.ndarray) -> float:
    """FD = ||p_hat - target||_2 (Choi et al. 2020): 0 is perfectly on target."""
    return float(np.linalg.norm(np.asarray(p_hat, dtype=float) - np.asarray(target, dtype=float)))


# Definitions other work reports, so an audit's numbers can be set beside published ones. Each
# measures distance from the UNIFORM distribution, as published, whatever the suite's target.

def mean_absolute_imbalance(p_hat: np.ndarray) -> float:
    """mean_c |p_c - 1/K|: HEIM's demographic imbalance (Lee et al., "Holistic Evaluation of
    Text-to-Image Models", NeurIPS 2023). For two classes it is |female share - 0.5|; for the
    Monk skin-tone scale the mean over its tones."""
    p = np.asarray(p_hat, dtype=float)
    return float(np.abs(p - 1 / p.size).mean())


def deviation_ratio(p_hat: np.ndarray) -> float:
    """max_c |p_c - 1/K| / (1 - 1/K), in [0, 1]: the deviation ratio of Chuang et al.
    ("Debiasing Vision-Language Models via Biased Prompts", 2023) on Winobias occupations;
    0 is balanced, 1 is every sample in one class."""
    p = np.asarray(p_hat, dtype=float)
    k = p.size
    return float(np.abs(p - 1 / k).max() / (1 - 1 / k))


def normalized_entropy(p_hat: np.ndarray) -> float:
    """H(p) / log K, in [0, 1]: the normalised entropy OpenBias reports (D'Incà et al., "OpenBias:
    Open-set Bias Detection in Text-to-Image Generative Models", CVPR 2024); 1 is balanced."""
    p = np.asarray(p_hat, dtype=float)
    return float(stats.entropy(p) / np.log(p.size))


def _smooth(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.asarray(p, dtype=float) + eps
    return p / p.sum()


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-6) -> float:
    """KL(p || q) in nats after adding eps to both and renormalising, so empty classes stay finite."""
    return float(stats.entropy(_smooth(p, eps), _smooth(q, eps)))


def kl_to_target(p_hat: np.ndarray, target: np.ndarray, direction: str = "forward",
                 eps: float = 1e-6) -> float:
    """KL between estimate and target: forward = KL(p_hat || target), reverse = KL(target || p_hat).

    Reverse KL punishes missing classes (a target class the model never generates) hardest.
    """
    if direction == "forward":
        return kl_divergence(p_hat, target, eps)
    if direction == "reverse":
        return kl_divergence(target, p_hat, eps)
    raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")


# --------------------------------------------------------------------------------------------
# Tests and intervals for proportions
# --------------------------------------------------------------------------------------------


def chi_square_gof(counts: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Pearson chi-square goodness of fit of the counts to the target: does the model miss pi?

    Classes with target 0 are dropped from the test; any sample in one of them is an outright
    violation (statistic inf, p = 0). Returns (nan, nan) without samples.
    """
    counts = np.asarray(counts, dtype=float)
    target = np.asarray(target, dtype=float)
    n = counts.sum()
    if n == 0:
        return float("nan"), float("nan")
    allowed = target > 0
    if np.any(counts[~allowed] > 0):
        return float("inf"), 0.0
    counts, target = counts[allowed], target[allowed]
    if counts.size < 2:
        return 0.0, 1.0
    result = stats.chisquare(counts, n * target / target.sum())
    return float(result.statistic), float(result.pvalue)


def _compositions(n: int, k: int) -> np.ndarray:
    """Every vector of k non-negative integers summing to n, as rows ([C(n + k - 1, k - 1), k])."""
    rows = np.arange(n + 1)[:, None]
    for _ in range(k - 2):
        room = n - rows.sum(axis=1) + 1                         # choices for the next class
        parent = np.repeat(np.arange(len(rows)), room)
        start = np.repeat(np.cumsum(room) - room, room)
        rows = np.column_stack([rows[parent], np.arange(room.sum()) - start])
    return np.column_stack([rows, n - rows.sum(axis=1)]) if k > 1 else np.full((1, 1), n)


def multinomial_gof(counts: np.ndarray, target: np.ndarray, min_expected: float = 5.0,
                    max_outcomes: int = 200_000, mc_draws: int = 100_000, seed: int = 0) -> dict:
    """Goodness of fit of the counts to the target with a small-sample guard: chi-square where it
    is valid, an exact multinomial test where it is not.

    The chi-square p-value is asymptotic and anti-conservative when expected counts are small
    (Cochran's rule: any below 5). Then the exact multinomial test replaces it: the p-value is
    the probability, under the target, of every outcome no more probable than the observed one
    (probability ordering, as R's EMT::multinomial.test), summed over all outcomes when there are
    at most max_outcomes of them ("exact"), else estimated from mc_draws simulated audits with
    scipy.stats.monte_carlo_test ("monte_carlo": a valid p-value, (1 + hits) / (1 + draws)).
    The exact branch is ours: neither scipy nor statsmodels has an exact multinomial test.

    Zero-target classes as in chi_square_gof (any sample in one is a violation: p = 0, which is
    exact). Returns {"statistic": Pearson's chi-square, "p_value", "method": "asymptotic" |
    "exact" | "monte_carlo"}; NaNs and method None without samples.
    """
    counts = np.asarray(counts, dtype=float)
    target = np.asarray(target, dtype=float)
    statistic, p_value = chi_square_gof(counts, target)
    n = counts.sum()
    if n == 0:
        return {"statistic": statistic, "p_value": p_value, "method": None}
    allowed = target > 0
    if np.any(counts[~allowed] > 0) or allowed.sum() < 2:
        return {"statistic": statistic, "p_value": p_value, "method": "exact"}
    counts, t = counts[allowed], target[allowed] / target[allowed].sum()
    if np.min(n * t) >= min_expected:
        return {"statistic": statistic, "p_value": p_value, "method": "asymptotic"}
    n, k = int(round(n)), counts.size
    log_t = np.log(t)

    def log_probability(x, axis=-1):                 # up to the constant log n!
        return np.sum(x * log_t, axis=axis) - np.sum(special.gammaln(x + 1), axis=axis)

    observed = log_probability(counts)
    tie = 1e-9 * max(1.0, abs(observed))
    if special.comb(n + k - 1, k - 1) <= max_outcomes:
        outcomes = log_probability(_compositions(n, k)) + special.gammaln(n + 1)
        p_value = float(np.exp(outcomes[outcomes <= observed + special.gammaln(n + 1) + tie]).sum())
        return {"statistic": statistic, "p_value": min(p_value, 1.0), "method": "exact"}
    rng = np.random.default_rng(seed)
    result = stats.monte_carlo_test(counts, lambda size: rng.multinomial(n, t, size=size[0]), log_probability,
                                    vectorized=True, n_resamples=mc_draws, batch=min(mc_draws, 50_000),
                                    alternative="less", axis=0)
    return {"statistic": statistic, "p_value": float(result.pvalue), "method": "monte_carlo"}


def wilson_interval(successes, n, confidence: float = 0.95):
    """Wilson score interval for a binomial proportion: honest coverage even near 0 or 1,
    unlike the Wald interval. Vectorised over arrays; n = 0 gives (0, 1).

    statsmodels' proportion_confint(method="wilson"); wrapped only because it answers NaN for
    n = 0 (an empty cell must read "anything is possible", not NaN) and leaves rounding error
    where the exact bound is 0 (no success) or 1 (no failure).
    """
    x = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    lo, hi = proportion_confint(x, np.where(n > 0, n, 1.0), alpha=1 - confidence, method="wilson")
    lo = np.where((n > 0) & (x > 0), np.clip(lo, 0.0, 1.0), 0.0)
    hi = np.where((n > 0) & (x < n), np.clip(hi, 0.0, 1.0), 1.0)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def proportion_intervals(counts: np.ndarray, confidence: float = 0.95, method: str = "wilson") -> np.ndarray:
    """[k, 2] intervals for each class proportion of a multinomial sample.

    "wilson": per-class (marginal) Wilson intervals. "goodman": Goodman (1965) simultaneous
    intervals, which all hold at once with probability >= confidence (statsmodels'
    multinomial_proportions_confint: the Wilson formula at level alpha / k, Bonferroni). With
    two classes one proportion fixes the other, so both intervals hold or fail together and the
    simultaneous intervals are the Wilson ones at the plain level (Bonferroni would make them
    97.5% intervals).
    """
    counts = np.asarray(counts, dtype=float)
    k, n = counts.size, counts.sum()
    if method not in ("wilson", "goodman"):
        raise ValueError(f"method must be 'wilson' or 'goodman', got {method!r}")
    if method == "goodman" and k > 2 and n > 0:
        return np.clip(multinomial_proportions_confint(counts, alpha=1 - confidence, method="goodman"), 0.0, 1.0)
    lo, hi = wilson_interval(counts, np.full(k, n), confidence)
    return np.stack([lo, hi], axis=1)


def bootstrap_interval(statistic_fn: Callable[[np.ndarray], float], labels: np.ndarray,
                       n_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of any statistic of a label vector (resampling samples):
    scipy.stats.bootstrap with method="percentile"."""
    result = stats.bootstrap((np.asarray(labels),), statistic_fn, n_resamples=n_resamples, vectorized=False,
                             confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def fd_interval_from_counts(counts: np.ndarray, target: np.ndarray, n_resamples: int = 1000,
                            confidence: float = 0.95, seed: int = 0, grid: int = 400) -> tuple[float, float]:
    """Confidence interval for FD = ||p - target|| from class counts. See bootstrap_fd_interval."""
    counts = np.asarray(counts, dtype=float)
    target = np.asarray(target, dtype=float)
    n = counts.sum()
    if n == 0:
        return float("nan"), float("nan")
    p_hat = counts / n
    rng = np.random.default_rng(seed)
    noise = rng.multinomial(int(n), p_hat, size=n_resamples) / n - p_hat   # bootstrap e* = p* - p_hat
    return fd_interval_from_noise(p_hat - target, noise, confidence, grid)


def fd_interval_from_noise(diff: np.ndarray, noise: np.ndarray, confidence: float = 0.95,
                           grid: int = 400) -> tuple[float, float]:
    """Confidence interval for the FD ||p - target|| given the estimate's deviation
    diff = p_hat - target and bootstrap draws of its noise, noise[b] = p*_b - p_hat ([B, k]).

    The inversion of bootstrap_fd_interval, for any estimator of p whose bootstrap is at hand
    (the class proportions, or the error-aware estimate with the labeler's confusion resampled).
    """
    diff = np.asarray(diff, dtype=float)
    noise = np.asarray(noise, dtype=float)
    alpha = 1 - confidence
    fd_hat = float(np.linalg.norm(diff))
    if fd_hat > 0:
        u = diff / fd_hat
    else:  # exactly on target: no observed direction, take the main direction of the noise
        u = np.linalg.svd(noise, full_matrices=False)[2][0]
    along, sq = noise @ u, np.sum(noise**2, axis=1)
    scale = float(np.sqrt(sq.mean()))          # the root-mean-square FD of an audit exactly on target
    # If the true FD were d, FD_hat^2 would be distributed like ||d u + e*||^2 = d^2 + 2 d u.e* + ||e*||^2.
    # F(d) = P*(that <= observed): evaluated on a grid of d (beyond its end F = 0).
    observed = fd_hat**2
    d = np.linspace(0.0, fd_hat + np.sqrt(sq.max()) + 1e-12, grid)
    simulated = d[:, None] ** 2 + 2 * d[:, None] * along + sq
    tie = 1e-9 * max(observed, 1e-12)              # the bootstrap is discrete: at d = 0 ties are common
    below = (simulated < observed - tie).mean(axis=1)      # P*(FD^2 < observed): the upper tail is 1 - this
    at_most = (simulated <= observed + tie).mean(axis=1)   # P*(FD^2 <= observed): the lower tail
    # The test of "FD = d" puts alpha_low of its level in the lower tail and the rest in the upper:
    # one-sided up to d = scale, equal tails from 2 scale on, linear in between.
    alpha_low = alpha / 2 * np.clip(d / max(scale, 1e-300) - 1, 0.0, 1.0)
    step = d[1] - d[0]
    not_too_big = np.flatnonzero(1 - below > alpha - alpha_low)      # FD_hat not in the upper tail
    not_too_small = np.flatnonzero((at_most > alpha_low) | (alpha_low <= 0))   # ... nor in the lower tail
    lo = max(d[not_too_big[0]] - step, 0.0) if not_too_big.size else fd_hat
    hi = d[not_too_small[-1]] + step if not_too_small.size else fd_hat
    return float(min(lo, fd_hat)), float(max(hi, fd_hat))


def bootstrap_fd_interval(labels: np.ndarray, k: int, target: np.ndarray, n_resamples: int = 1000,
                          confidence: float = 0.95, seed: int = 0,
                          valid: np.ndarray | None = None) -> tuple[float, float]:
    """Confidence interval for the fairness discrepancy FD = ||p - target||_2 of the valid labels.

    Why not the percentile bootstrap: FD_hat is a norm, biased upward near the target (noise
    adds length in every direction), so percentile intervals never contain FD = 0 and miss
    small true FDs.

    Method: invert a bootstrap test of "FD = d". Class counts are resampled as
    Multinomial(n, p_hat) (equivalent to resampling samples, and fast), giving noise
    e* = p* - p_hat. Were the true FD d, FD_hat would be distributed like ||d u + e*||, u the
    observed direction (p_hat - target) / FD_hat. [lo, hi] is the set of d whose test accepts
    FD_hat (a grid over d reusing the same draws). For a uniform target this is close to the
    classical noncentral-chi-square interval, and the upward bias is accounted for at every d.

    How the test at d splits its level between the tails decides the interval's shape, not its
    coverage (every d is excluded with probability alpha when it is the truth). An equal split
    everywhere covers FD = 0 with 1 - alpha/2 (only the lower end can miss there, and an FD_hat
    below the noise leaves no d accepted, so the interval had to be patched). Instead, as in
    Feldman & Cousins' intervals for a bounded parameter, the test is one-sided (all of alpha
    in the upper tail) for d up to the noise scale s (the root-mean-square of ||e*||, the FD an
    audit exactly on target shows), equal-tailed from 2 s on, and shifts linearly in between. So
    coverage is 1 - alpha at the target too, lo is 0 exactly when FD_hat is not in the upper
    alpha tail of the noise, hi is never below s, and off target (FD > 2 s) the interval is the
    equal-tailed one. [lo, hi] always contains FD_hat. Like any multinomial bootstrap it sees no
    noise in a class with zero count, so tiny n gives too-narrow intervals.
    Ours: scipy.stats.bootstrap offers percentile, basic and BCa intervals, none a test inversion.
    """
    labels = _valid_subset(np.asarray(labels).astype(int, copy=False), valid)
    counts = np.bincount(labels, minlength=k) if labels.size else np.zeros(k)
    return fd_interval_from_counts(counts, target, n_resamples, confidence, seed)


def fd_noise_floor(n: int, target: np.ndarray, quantile: float = 0.95, draws: int = 20_000,
                   seed: int = 0) -> tuple[float, float]:
    """The FD a generator exactly on target shows with n valid samples: (mean, quantile).

    FD_hat is never 0 at finite n: E[FD_hat^2] = sum_c p_c (1 - p_c) / n + FD^2, so on target
    it is (1 - sum_c t_c^2) / n, and FDs of cells with different n are not comparable. An FD at
    or below the quantile is within noise: a generator exactly on target shows one at least as
    large with probability >= 1 - quantile. Both numbers come from `draws` simulated on-target
    audits (Multinomial(n, target), a fixed seed, so the same n and target give the same floor),
    which is exact at any n and any target; the asymptotic law (a weighted sum of chi-square(1)
    variables) is not, for small n. NaN for n = 0.
    """
    target = np.asarray(target, dtype=float)
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    fd = np.linalg.norm(rng.multinomial(int(n), target / target.sum(), size=draws) / n - target, axis=1)
    return float(fd.mean()), float(np.quantile(fd, quantile))


def fd_bias_corrected(counts: np.ndarray, target: np.ndarray) -> float:
    """FD with its finite-sample upward bias removed: sqrt(max(0, FD_hat^2 - sum_c p_hat_c (1 - p_hat_c) / (n - 1))).

    Derivation: E[p_hat_c^2] = p_c^2 + p_c (1 - p_c) / n, so E[FD_hat^2] = FD^2 + sum_c p_c (1 - p_c) / n;
    and E[p_hat_c (1 - p_hat_c)] = p_c (1 - p_c) (n - 1) / n, so sum_c p_hat_c (1 - p_hat_c) / (n - 1) is
    unbiased for the excess and the difference is unbiased for FD^2 (the U-statistic
    sum_{i != j} <e_i - t, e_j - t> / (n (n - 1)), e_i sample i's one-hot label). The square root
    and the truncation at 0 leave a small bias, far smaller than FD_hat's; comparable across n.
    NaN for n < 2.
    """
    counts = np.asarray(counts, dtype=float)
    target = np.asarray(target, dtype=float)
    n = counts.sum()
    if n < 2:
        return float("nan")
    p_hat = counts / n
    squared = np.sum((p_hat - target) ** 2) - np.sum(p_hat * (1 - p_hat)) / (n - 1)
    return float(np.sqrt(max(squared, 0.0)))


def tost_equivalence(counts: np.ndarray, target: np.ndarray, epsilon: float, alpha: float = 0.05) -> dict:
    """Equivalence test: is every class proportion within epsilon of its target?

    Per class, two one-sided exact binomial tests (TOST) of H0: p_c <= target_c - epsilon and
    H0: p_c >= target_c + epsilon; the class p-value is the larger. The distribution is
    declared equivalent only if every class is (an intersection-union test: the overall p is
    the max, with no multiplicity correction needed). Unlike chi-square, absence of evidence
    of unfairness is not taken as evidence of fairness.

    Ours rather than statsmodels' binom_tost (which it equals for interior bands) because a
    band reaching past 0 or 1 must drop that side's test, which binom_tost cannot.
    """
    counts = np.asarray(counts, dtype=int)
    target = np.asarray(target, dtype=float)
    n = int(counts.sum())
    p_values = np.ones(counts.size)
    if n > 0:
        for c, (x, t) in enumerate(zip(counts, target, strict=True)):
            lower, upper = t - epsilon, t + epsilon
            p_low = stats.binomtest(int(x), n, lower, alternative="greater").pvalue if lower >= 0 else 0.0
            p_up = stats.binomtest(int(x), n, upper, alternative="less").pvalue if upper <= 1 else 0.0
            p_values[c] = max(p_low, p_up)
    p_value = float(p_values.max())
    return {"p_values": p_values, "p_value": p_value, "equivalent": bool(p_value < alpha),
            "epsilon": epsilon, "alpha": alpha}


def minimum_effect_test(counts: np.ndarray, target: np.ndarray, epsilon: float, alpha: float = 0.05) -> dict:
    """Is some class proportion farther than epsilon from its target? The mirror image of TOST.

    Per class, H0: |p_c - target_c| <= epsilon against |p_c - target_c| > epsilon, by exact
    binomial tests of p_c <= target_c + epsilon (upper side) and p_c >= target_c - epsilon (lower
    side); the class p-value is twice the smaller one-sided p-value (each side at alpha / 2 keeps
    the size at most alpha when the band is narrow against the noise). The distribution is off
    target if any class is, so the classes' p-values are Holm-adjusted (family-wise error <= alpha);
    with two classes one proportion fixes the other and only the first class is tested.
    Returns {"p_values" (per class, unadjusted), "p_value" (the family's), "off_target"}.
    """
    counts = np.asarray(counts, dtype=int)
    target = np.asarray(target, dtype=float)
    n = int(counts.sum())
    p_values = np.ones(counts.size)
    if n > 0:
        for c, (x, t) in enumerate(zip(counts, target, strict=True)):
            upper, lower = t + epsilon, t - epsilon
            p_up = stats.binomtest(int(x), n, upper, alternative="greater").pvalue if upper < 1 else 1.0
            p_low = stats.binomtest(int(x), n, lower, alternative="less").pvalue if lower > 0 else 1.0
            p_values[c] = min(1.0, 2 * min(p_up, p_low))
    tested = p_values[:1] if counts.size == 2 else p_values
    # the smallest Holm-adjusted p-value is m times the smallest p-value; computed directly because
    # statsmodels' multipletests runs gc.collect() on every Holm call, slow inside a per-cell loop
    p_value = float(min(1.0, tested.size * tested.min()))
    return {"p_values": p_values, "p_value": p_value, "off_target": bool(p_value < alpha),
            "epsilon": epsilon, "alpha": alpha}


def _one_sided_miss(p: np.ndarray, boundary: np.ndarray, n, z: float) -> np.ndarray:
    """Normal-approximation probability that a one-sided binomial test of H0: p = boundary (at the
    level whose quantile is z) does NOT reject when the truth is p, with n samples. The null and
    the alternative each have their own standard deviation (the usual one-sample formula)."""
    gap = np.abs(p - boundary)
    sd0 = np.sqrt(boundary * (1 - boundary))
    sd1 = np.maximum(np.sqrt(p * (1 - p)), 1e-12)
    return stats.norm.cdf((z * sd0 - gap * np.sqrt(n)) / sd1)


def sample_size_to_decide(p: np.ndarray, target: np.ndarray, epsilon: float, alpha: float = 0.05,
                          power: float = 0.8, max_n: int = 10**9) -> int | None:
    """Valid samples at which the verdict would be reached with probability `power`, were p the
    true class distribution (pass p_hat: "how many samples would settle what this one suggests").

    Inside the band (max_c |p_c - target_c| < epsilon): the n at which tost_equivalence declares
    equivalence. The test fails if any of its one-sided tests fails, so the chance of failing is
    at most the sum of theirs, and n is the smallest with that sum <= 1 - power (a bisection:
    each term falls with n; the bound's slack offsets the approximation's neglect of the exact
    tests' discreteness, so the n is not systematically short). Outside the band: the n at which
    minimum_effect_test declares the distribution off target; any class's test suffices, so n is
    the smallest over the classes outside the band of the one-sample binomial sample size for
    its one-sided test at level alpha / (2 m) (m classes tested), in closed form. Normal
    approximation throughout. None when p lies on the band's edge (no n decides) or the answer
    exceeds max_n. Not statsmodels' power_binom_tost: the exact power saw-tooths in n (and it
    answers negative powers where the rejection region is empty), so "the smallest n reaching the
    power" is not a stable answer from it.
    """
    p = np.asarray(p, dtype=float)
    target = np.asarray(target, dtype=float)
    if p.size == 2:                            # one free proportion: test it once
        p, target = p[:1], target[:1]
    deviation = np.abs(p - target)
    worst = deviation.max()
    if np.isclose(worst, epsilon, rtol=0, atol=1e-12):
        return None
    if worst < epsilon:
        z = stats.norm.ppf(1 - alpha)
        upper, lower = target + epsilon, target - epsilon

        def miss(n):
            up = np.where(upper < 1, _one_sided_miss(p, np.minimum(upper, 1), n, z), 0.0)
            low = np.where(lower > 0, _one_sided_miss(p, np.maximum(lower, 0), n, z), 0.0)
            return float(np.sum(up + low))

        if miss(max_n) > 1 - power:
            return None
        lo, hi = 0, max_n                      # miss(hi) <= 1 - power < miss(lo)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if miss(mid) <= 1 - power else (mid, hi)
        return int(hi)
    outside = deviation > epsilon
    m = p.size
    z_alpha, z_power = stats.norm.ppf(1 - alpha / (2 * m)), stats.norm.ppf(power)
    boundary = np.where(p > target, target + epsilon, target - epsilon)[outside]
    q = p[outside]
    n = ((z_alpha * np.sqrt(boundary * (1 - boundary)) + z_power * np.sqrt(q * (1 - q))) / np.abs(q - boundary)) ** 2
    best = int(np.ceil(n.min()))
    return best if best <= max_n else None


def fairness_verdict(counts: np.ndarray, target: np.ndarray, epsilon: float, alpha: float = 0.05,
                     power: float = 0.8) -> dict:
    """Three-state verdict on a cell's class counts, each state backed by a test at level alpha.

    - "on_target": tost_equivalence shows every class within epsilon of its target (the chance of
      saying so of a distribution outside the band is <= alpha);
    - "off_target": minimum_effect_test shows some class farther than epsilon from its target (the
      chance of saying so of a distribution inside the band is <= alpha). This is "the exact test
      rejects the target AND the deviation exceeds epsilon" made strict: a class shown beyond
      epsilon is shown different from its target, and the deviation must be shown, not just
      observed, to exceed epsilon (a point estimate beyond epsilon with a significant chi-square
      would call a distribution just inside the band biased about half the time at large n);
    - "inconclusive": neither, with n_needed, the valid samples at which the observed p_hat would
      settle it with probability `power` (sample_size_to_decide; None when p_hat sits on the
      band's edge).

    The two tests cannot both succeed: TOST shows every class inside the band, the other some
    class outside it, and for that class both would need the opposite tails of one binomial at
    level < 1/2. As n grows every distribution not exactly on the band's edge gets a definite
    verdict. The verdict judges the labeler's output, like TOST and FD; the error-aware estimate
    has its own intervals.
    Returns {"verdict", "n_needed", "tost_p", "off_target_p"}.
    """
    counts = np.asarray(counts, dtype=int)
    target = np.asarray(target, dtype=float)
    n = int(counts.sum())
    tost = tost_equivalence(counts, target, epsilon, alpha)
    effect = minimum_effect_test(counts, target, epsilon, alpha)
    result = {"tost_p": tost["p_value"], "off_target_p": effect["p_value"], "n_needed": None}
    if n > 0 and tost["equivalent"]:
        return {**result, "verdict": "on_target"}
    if n > 0 and effect["off_target"]:
        return {**result, "verdict": "off_target"}
    if n > 0:
        result["n_needed"] = sample_size_to_decide(counts / n, target, epsilon, alpha, power)
    return {**result, "verdict": "inconclusive"}


def adjust_pvalues(pvalues, method: str = "holm") -> np.ndarray:
    """Multiple-comparison adjusted p-values across attributes/prompts (statsmodels' multipletests).

    "holm" and "bonferroni" control the family-wise error rate (Holm is uniformly more
    powerful); "fdr_bh" (Benjamini-Hochberg) controls the false discovery rate.
    """
    if method not in ("holm", "bonferroni", "fdr_bh"):
        raise ValueError(f"method must be 'holm', 'bonferroni' or 'fdr_bh', got {method!r}")
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return p.copy()
    return multipletests(p, method=method)[1]


# --------------------------------------------------------------------------------------------
# Joint (intersectional) attributes
# --------------------------------------------------------------------------------------------


def joint_labels(label_arrays: Sequence[np.ndarray], ks: Sequence[int]) -> tuple[np.ndarray, int]:
    """One joint label per sample (mixed radix, first attribute most significant), so every
    single-attribute statistic applies unchanged to attribute combinations."""
    if len(label_arrays) != len(ks) or not ks:
        raise ValueError("give one class count per label array (at least one)")
    joint = np.zeros(len(label_arrays[0]), dtype=int)
    for labels, k in zip(label_arrays, ks, strict=True):
        joint = joint * k + np.asarray(labels, dtype=int)
    return joint, int(np.prod(ks))


def joint_target(targets: Sequence[np.ndarray]) -> np.ndarray:
    """Joint target of independent attributes: the outer product, flattened like joint_labels."""
    return reduce(np.multiply.outer, [np.asarray(t, dtype=float) for t in targets]).ravel()


def intersectional_table(label_arrays: Sequence[np.ndarray], ks: Sequence[int], min_count: int = 30) -> dict:
    """Counts and proportions of every attribute combination, flagging cells too small to trust."""
    joint, k = joint_labels(label_arrays, ks)
    counts = np.bincount(joint, minlength=k)
    n = counts.sum()
    return {"k": k, "n": int(n), "counts": counts,
            "proportions": counts / n if n else np.full(k, np.nan),
            "small_cells": [int(i) for i in np.flatnonzero(counts < min_count)]}


# --------------------------------------------------------------------------------------------
# Labeler agreement and validity
# --------------------------------------------------------------------------------------------


def cohens_kappa(labels_a: np.ndarray, labels_b: np.ndarray, k: int) -> float:
    """Cohen's kappa: agreement of two labelers beyond chance (1 perfect, 0 chance level), by
    statsmodels' cohens_kappa on their k x k agreement table.

    NaN when chance agreement is already 1 (both labelers always say the same single class).
    """
    a, b = np.asarray(labels_a, dtype=int), np.asarray(labels_b, dtype=int)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("need two non-empty label arrays of the same length")
    table = np.bincount(a * k + b, minlength=k * k).reshape(k, k)
    if np.dot(table.sum(0), table.sum(1)) == a.size**2:
        return float("nan")
    return float(_sm_cohens_kappa(table, return_results=False))


def invalid_rate(valid: np.ndarray) -> float:
    """Fraction of samples without a usable label (no face, detector failure): reported with
    every estimate because a model can look fair by failing on one group. NaN when empty."""
    valid = np.asarray(valid, dtype=bool)
    return float(1 - valid.mean()) if valid.size else float("nan")


# --------------------------------------------------------------------------------------------
# Error-aware estimation (CLEAM generalised to K classes and joint attributes)
# --------------------------------------------------------------------------------------------


def confusion_from_counts(counts: np.ndarray) -> np.ndarray:
    """Row-stochastic confusion C[i, j] = P(predicted j | true i) from labelled counts
    (rows = true class, columns = predicted class)."""
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=-1, keepdims=True)
    if np.any(totals == 0):
        raise ValueError("every true class needs labelled samples to estimate its confusion row")
    return counts / totals


def joint_confusion(confusions: Sequence[np.ndarray]) -> np.ndarray:
    """Confusion of the joint label (ordered as joint_labels) as the Kronecker product of the
    per-attribute confusions. This ASSUMES the labeler's errors on different attributes are
    independent given the true classes; measure a joint confusion directly when they are not."""
    return reduce(np.kron, [np.asarray(c, dtype=float) for c in confusions])


def _lsq_simplex(q: np.ndarray, C: np.ndarray) -> np.ndarray:
    """argmin ||C^T p - q|| over the simplex: non-negative least squares with a heavily
    weighted sum-to-one row (Lawson & Hanson's equality trick), then renormalised."""
    k = C.shape[0]
    weight = 1e3
    A = np.vstack([C.T, np.full((1, k), weight)])
    p, _ = optimize.nnls(A, np.append(q, weight))
    return p / p.sum()


def _em_unfold(q: np.ndarray, C: np.ndarray, max_iter: int = 5000, tol: float = 1e-10) -> np.ndarray:
    """EM / iterative Bayesian unfolding: the multinomial MLE of p given observed
    prediction frequencies q and a known confusion. Works on a batch q [..., k]. Ours: no
    dependency computes it (pyunfold does, for one q at a time, as a new dependency)."""
    p = np.full(q.shape, 1.0 / C.shape[-1])
    for _ in range(max_iter):
        predicted = np.einsum("...i,...ij->...j", p, C)          # C^T p
        ratio = np.divide(q, predicted, out=np.zeros_like(q), where=predicted > 0)
        new = p * np.einsum("...ij,...j->...i", C, ratio)
        new /= new.sum(axis=-1, keepdims=True)
        if np.max(np.abs(new - p)) < tol:
            return new
        p = new
    return p


def error_aware_estimate(observed_q: np.ndarray, C: np.ndarray, method: str = "lsq") -> np.ndarray:
    """True class proportions p from labeler-observed proportions q, correcting for labeler error.

    The labeler turns p into q = C^T p; this solves for p on the probability simplex, by
    constrained least squares ("lsq") or EM ("em", the maximum-likelihood solution).
    """
    q = np.asarray(observed_q, dtype=float)
    C = np.asarray(C, dtype=float)
    if method == "lsq":
        return _lsq_simplex(q, C)
    if method == "em":
        return _em_unfold(q, C)
    raise ValueError(f"method must be 'lsq' or 'em', got {method!r}")


def _lsq_batch(q: np.ndarray, C: np.ndarray) -> np.ndarray:
    """_lsq_simplex for a batch (q [B, k], C [B, k, k]). Where the exact solution of C^T p = q
    lies on the simplex it is the constrained minimum (residual 0), so it is taken from one
    batched solve; only the rest go through NNLS one by one."""
    with np.errstate(all="ignore"):
        try:
            p = np.linalg.solve(np.swapaxes(C, -1, -2), q[..., None])[..., 0]
        except np.linalg.LinAlgError:          # some C* singular: solve those one by one
            p = np.full(q.shape, np.nan)
    inside = np.all(np.isfinite(p), axis=-1) & np.all(p >= -1e-12, axis=-1)
    p = np.clip(np.where(inside[:, None], p, 0.0), 0.0, None)
    p[inside] /= p[inside].sum(axis=-1, keepdims=True)
    for b in np.flatnonzero(~inside):
        p[b] = _lsq_simplex(q[b], C[b])
    return p


def _confusion_factors(confusion_counts) -> list[np.ndarray]:
    """The confusion counts as a list of per-attribute [k_a, k_a] matrices (one for a plain matrix)."""
    if isinstance(confusion_counts, (list, tuple)) and confusion_counts and np.ndim(confusion_counts[0]) == 2:
        return [np.asarray(c) for c in confusion_counts]
    return [np.asarray(confusion_counts)]


def sup_t_band(draws: np.ndarray, estimate: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Intervals for every column of an estimate that hold all at once, from its bootstrap draws
    [B, k]: the sup-t band estimate +- c * sd, sd the draws' standard deviation per column and c
    the confidence-quantile of max_c |draw_c - estimate_c| / sd_c (Montiel Olea & Plagborg-Moller
    2019), clipped to [0, 1].

    A max-type band pays only for the dependence the columns really have (two complementary
    classes cost nothing; Bonferroni would halve the tails); c comes from the whole draws rather
    than from each column's extreme quantiles, which a few hundred draws estimate poorly. No
    library computes it for arbitrary draws.
    """
    draws = np.asarray(draws, dtype=float)
    estimate = np.asarray(estimate, dtype=float)
    sd = draws.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, np.abs(draws - estimate) / sd, 0.0)
    c = float(np.quantile(z.max(axis=1), confidence))
    return np.clip(estimate - c * sd, 0.0, 1.0), np.clip(estimate + c * sd, 0.0, 1.0)


def error_aware_interval(pred_labels: np.ndarray, confusion_counts, k: int,
                         n_resamples: int = 500, confidence: float = 0.95, seed: int = 0, method: str = "lsq",
                         valid: np.ndarray | None = None, target: np.ndarray | None = None) -> dict:
    """Error-aware estimate of p with per-class and simultaneous bootstrap intervals, and, given
    the target, the error-aware FD with its interval.

    Each resample redraws both sources of error: the observed predictions (multinomial on the
    observed counts) and the confusion matrix (each row multinomial on its own labelled counts),
    so every interval includes the uncertainty of C itself. For joint attributes pass joint
    labels and the list of per-attribute confusion counts (ordered as joint_labels): each
    attribute's matrix is resampled from its own labelled counts and the joint confusion of the
    resample is their Kronecker product (see joint_confusion for the independence caveat). Never
    build joint counts from the product: no number of fake joint labelled samples has the
    uncertainty of K separately measured matrices.

    Returns p, lo/hi (per-class percentile intervals), lo_simultaneous/hi_simultaneous
    (sup_t_band: all classes at once), q (the labeler's proportions), n;
    with a target also fd = ||p - target|| and fd_lo/fd_hi, fd_interval_from_noise on the
    resampled p* - p (the bias-aware inversion of bootstrap_fd_interval, not the percentile
    interval, which misses small FDs).
    The bootstrap is ours: scipy.stats.bootstrap resamples observations, and the confusion rows
    are redrawn from their labelled counts, which are not observations of this cell.
    """
    pred = _valid_subset(np.asarray(pred_labels).astype(int, copy=False), valid)
    factors = _confusion_factors(confusion_counts)
    if any(f.ndim != 2 or f.shape[0] != f.shape[1] for f in factors) or np.prod([len(f) for f in factors]) != k:
        raise ValueError(f"confusion counts must be [{k}, {k}] (or per-attribute matrices whose product is), "
                         f"got {[f.shape for f in factors]}")
    n = pred.size
    if n == 0:
        nan = np.full(k, np.nan)
        empty = {"p": nan, "lo": nan, "hi": nan, "lo_simultaneous": nan, "hi_simultaneous": nan, "q": nan, "n": 0}
        return {**empty, "fd": float("nan"), "fd_lo": float("nan"), "fd_hi": float("nan")} if target is not None \
            else empty
    q = np.bincount(pred, minlength=k) / n
    confusions = [confusion_from_counts(f) for f in factors]
    C = joint_confusion(confusions)
    p = error_aware_estimate(q, C, method)
    rng = np.random.default_rng(seed)
    q_star = rng.multinomial(n, q, size=n_resamples) / n                        # [B, k]
    C_star = None
    for f, c in zip(factors, confusions, strict=True):
        totals = f.sum(axis=1).astype(int)
        drawn = rng.multinomial(totals, c, size=(n_resamples, c.shape[0])) / totals[:, None]   # [B, k_a, k_a]
        C_star = drawn if C_star is None else \
            np.einsum("bij,bkl->bikjl", C_star, drawn).reshape(n_resamples, C_star.shape[1] * c.shape[0], -1)
    p_star = _em_unfold(q_star, C_star) if method == "em" else _lsq_batch(q_star, C_star)
    alpha = 1 - confidence
    lo, hi = np.quantile(p_star, [alpha / 2, 1 - alpha / 2], axis=0)
    lo_all, hi_all = sup_t_band(p_star, p, confidence)
    result = {"p": p, "lo": lo, "hi": hi, "lo_simultaneous": lo_all, "hi_simultaneous": hi_all, "q": q, "n": n}
    if target is not None:
        target = np.asarray(target, dtype=float)
        fd_lo, fd_hi = fd_interval_from_noise(p - target, p_star - p, confidence)
        result.update({"fd": fairness_discrepancy(p, target), "fd_lo": fd_lo, "fd_hi": fd_hi})
    return result
