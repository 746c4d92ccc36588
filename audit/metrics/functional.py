"""Fairness statistics as pure functions on numpy arrays (no torch, no state).

Everything here works on class labels, counts or proportion vectors of one (possibly joint)
attribute. The streaming and per-cell wrappers beside this module only gather the arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce

import numpy as np
from scipy import optimize, stats

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


def wilson_interval(successes, n, confidence: float = 0.95):
    """Wilson score interval for a binomial proportion: honest coverage even near 0 or 1,
    unlike the Wald interval. Vectorised over arrays; n = 0 gives (0, 1)."""
    x = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    z2 = stats.norm.ppf(0.5 + confidence / 2) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.where(n > 0, x * (n - x) / n, 0.0)
    center = (x + z2 / 2) / (n + z2)
    half = np.sqrt(z2 * spread + z2 * z2 / 4) / (n + z2)
    lo, hi = np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def proportion_intervals(counts: np.ndarray, confidence: float = 0.95, method: str = "wilson") -> np.ndarray:
    """[k, 2] intervals for each class proportion of a multinomial sample.

    "wilson": per-class (marginal) Wilson intervals. "goodman": Goodman (1965) simultaneous
    intervals, which all hold at once with probability >= confidence; Goodman's formula is the
    Wilson formula with the chi-square(1) quantile at level alpha / k (Bonferroni).
    """
    counts = np.asarray(counts, dtype=float)
    k, n = counts.size, counts.sum()
    if method == "wilson":
        level = confidence
    elif method == "goodman":
        level = 1 - (1 - confidence) / k
    else:
        raise ValueError(f"method must be 'wilson' or 'goodman', got {method!r}")
    lo, hi = wilson_interval(counts, np.full(k, n), level)
    return np.stack([lo, hi], axis=1)


def bootstrap_interval(statistic_fn: Callable[[np.ndarray], float], labels: np.ndarray,
                       n_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of any statistic of a label vector (resampling samples)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    values = np.array([statistic_fn(labels[rng.integers(0, n, n)]) for _ in range(n_resamples)])
    alpha = 1 - confidence
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def fd_interval_from_counts(counts: np.ndarray, target: np.ndarray, n_resamples: int = 1000,
                            confidence: float = 0.95, seed: int = 0, grid: int = 400) -> tuple[float, float]:
    """Confidence interval for FD = ||p - target|| from class counts. See bootstrap_fd_interval."""
    counts = np.asarray(counts, dtype=float)
    target = np.asarray(target, dtype=float)
    n = counts.sum()
    if n == 0:
        return float("nan"), float("nan")
    alpha = 1 - confidence
    p_hat = counts / n
    fd_hat = float(np.linalg.norm(p_hat - target))
    rng = np.random.default_rng(seed)
    noise = rng.multinomial(int(n), p_hat, size=n_resamples) / n - p_hat   # bootstrap e* = p* - p_hat
    if fd_hat > 0:
        u = (p_hat - target) / fd_hat
    else:  # exactly on target: no observed direction, take the main direction of the noise
        u = np.linalg.svd(noise, full_matrices=False)[2][0]
    along, sq = noise @ u, np.sum(noise**2, axis=1)
    # If the true FD were d, FD_hat^2 would be distributed like ||d u + e*||^2 = d^2 + 2 d u.e* + ||e*||^2.
    # F(d) = P*(that <= observed): evaluated on a grid of d (beyond its end F = 0).
    observed = fd_hat**2
    d = np.linspace(0.0, fd_hat + np.sqrt(sq.max()) + 1e-12, grid)
    below = (d[:, None] ** 2 + 2 * d[:, None] * along + sq <= observed).mean(axis=1)
    step = d[1] - d[0]
    not_too_big = np.flatnonzero(below <= 1 - alpha / 2)      # FD_hat not in the upper alpha/2 tail
    not_too_small = np.flatnonzero(below >= alpha / 2)        # FD_hat not in the lower alpha/2 tail
    lo = max(d[not_too_big[0]] - step, 0.0) if not_too_big.size else fd_hat
    hi = d[not_too_small[-1]] + step if not_too_small.size else fd_hat
    # An FD_hat closer to the target than the noise makes the inverted hi collapse toward 0: never
    # report less than the noise resolves, the Wald upper bound of an audit exactly on target.
    hi = max(hi, stats.norm.ppf(1 - alpha / 2) * along.std())
    return float(min(lo, fd_hat)), float(max(hi, fd_hat))


def bootstrap_fd_interval(labels: np.ndarray, k: int, target: np.ndarray, n_resamples: int = 1000,
                          confidence: float = 0.95, seed: int = 0,
                          valid: np.ndarray | None = None) -> tuple[float, float]:
    """Confidence interval for the fairness discrepancy FD = ||p - target||_2 of the valid labels.

    Why not the percentile bootstrap: FD_hat is a norm, biased upward near the target (noise
    adds length in every direction), so percentile intervals never contain FD = 0 and miss
    small true FDs (83% coverage at FD = 0.03, k = 4, n = 500, even with lo set to 0 whenever
    chi-square accepts the target).

    Method: invert a bootstrap test of "FD = d". Class counts are resampled as
    Multinomial(n, p_hat) (equivalent to resampling samples, and fast), giving noise
    e* = p* - p_hat. Were the true FD d, FD_hat would be distributed like ||d u + e*||, u the
    observed direction (p_hat - target) / FD_hat. lo is the smallest d for which FD_hat is not
    in the upper alpha/2 tail of that distribution, hi the largest d for which it is not in the
    lower alpha/2 tail (a grid over d reusing the same draws). For a uniform target this is
    close to the classical noncentral-chi-square interval, and the upward bias is accounted for
    at every d. When FD_hat is smaller than the noise the inverted hi collapses toward 0, so hi
    is at least the Wald bound of an audit exactly on target (z * sd of e* along u); [lo, hi]
    always contains FD_hat. Like any multinomial bootstrap it sees no noise in a class with
    zero count, so tiny n gives too-narrow intervals.

    Measured coverage of the true FD (95% intervals, 1,000 simulated audits, n = 500, uniform
    target, see tests/metrics/test_functional.py): 94-96% off target for k = 2 and k = 4. At
    FD = 0 only the lower end can miss (lo is 0 unless FD = 0 is rejected by the upper-tail
    test), so coverage there is 1 - alpha/2 = 97.5% by construction, and 97-98% for true FDs
    below the noise level (about 0.04 at n = 500): the boundary behaviour of an equal-tailed
    interval for a non-negative quantity.
    """
    labels = _valid_subset(np.asarray(labels).astype(int, copy=False), valid)
    counts = np.bincount(labels, minlength=k) if labels.size else np.zeros(k)
    return fd_interval_from_counts(counts, target, n_resamples, confidence, seed)


def tost_equivalence(counts: np.ndarray, target: np.ndarray, epsilon: float, alpha: float = 0.05) -> dict:
    """Equivalence test: is every class proportion within epsilon of its target?

    Per class, two one-sided exact binomial tests (TOST) of H0: p_c <= target_c - epsilon and
    H0: p_c >= target_c + epsilon; the class p-value is the larger. The distribution is
    declared equivalent only if every class is (an intersection-union test: the overall p is
    the max, with no multiplicity correction needed). Unlike chi-square, absence of evidence
    of unfairness is not taken as evidence of fairness.
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


def adjust_pvalues(pvalues, method: str = "holm") -> np.ndarray:
    """Multiple-comparison adjusted p-values across attributes/prompts.

    "holm" and "bonferroni" control the family-wise error rate (Holm is uniformly more
    powerful); "fdr_bh" (Benjamini-Hochberg) controls the false discovery rate.
    """
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    if method == "holm":
        order = np.argsort(p)
        stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(stepped, 1.0)
        return adjusted
    if method == "fdr_bh":
        return stats.false_discovery_control(p, method="bh")
    raise ValueError(f"method must be 'holm', 'bonferroni' or 'fdr_bh', got {method!r}")


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
    """Cohen's kappa: agreement of two labelers beyond chance (1 perfect, 0 chance level).

    NaN when chance agreement is already 1 (both labelers always say the same single class).
    """
    a, b = np.asarray(labels_a, dtype=int), np.asarray(labels_b, dtype=int)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("need two non-empty label arrays of the same length")
    observed = float(np.mean(a == b))
    chance = float(np.dot(np.bincount(a, minlength=k), np.bincount(b, minlength=k))) / a.size**2
    if chance == 1.0:
        return float("nan")
    return (observed - chance) / (1 - chance)


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
    prediction frequencies q and a known confusion. Works on a batch q [..., k]."""
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


def error_aware_interval(pred_labels: np.ndarray, confusion_counts: np.ndarray, k: int,
                         n_resamples: int = 500, confidence: float = 0.95, seed: int = 0, method: str = "lsq",
                         valid: np.ndarray | None = None) -> dict:
    """Error-aware estimate of p with per-class percentile-bootstrap intervals.

    Each resample redraws both sources of error: the observed predictions (multinomial on the
    observed counts) and the confusion matrix (each row multinomial on its own labelled
    counts), so the interval includes the uncertainty of C itself. For joint attributes pass
    joint labels and joint confusion counts (see joint_confusion for the independence caveat).
    """
    pred = _valid_subset(np.asarray(pred_labels).astype(int, copy=False), valid)
    confusion_counts = np.asarray(confusion_counts)
    if confusion_counts.shape != (k, k):
        raise ValueError(f"confusion counts must be [{k}, {k}], got {confusion_counts.shape}")
    n = pred.size
    if n == 0:
        nan = np.full(k, np.nan)
        return {"p": nan, "lo": nan, "hi": nan, "q": nan, "n": 0}
    q = np.bincount(pred, minlength=k) / n
    C = confusion_from_counts(confusion_counts)
    p = error_aware_estimate(q, C, method)
    rng = np.random.default_rng(seed)
    q_star = rng.multinomial(n, q, size=n_resamples) / n                        # [B, k]
    row_totals = confusion_counts.sum(axis=1).astype(int)
    C_star = rng.multinomial(row_totals, C, size=(n_resamples, k)) / row_totals[:, None]  # [B, k, k]
    if method == "em":
        p_star = _em_unfold(q_star, C_star)
    else:
        p_star = np.array([_lsq_simplex(qs, cs) for qs, cs in zip(q_star, C_star, strict=True)])
    alpha = 1 - confidence
    lo, hi = np.quantile(p_star, [alpha / 2, 1 - alpha / 2], axis=0)
    return {"p": p, "lo": lo, "hi": hi, "q": q, "n": n}
