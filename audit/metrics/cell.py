"""Fairness metrics of one cell under one evaluation labeler (from its cached label table)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.metrics import functional as F

BOOTSTRAP_RESAMPLES = 1000
# Every cell bootstraps from seed 0, so the Monte Carlo error of the percentile tails is the same
# in every audit and does not average out: 1,000 resamples (about 25 draws per tail) left the
# error-aware intervals short of 95% (benchmarks/results/coverage.md has the figures and the cost).
ERROR_AWARE_RESAMPLES = 4000


def label_matrix(labels: pd.DataFrame, attribute: str, classes: list[str]) -> np.ndarray:
    """[N, K] probabilities of one attribute from a label table's p:<attribute>:<class> columns."""
    columns = [f"p:{attribute}:{c}" for c in classes]
    missing = [c for c in columns if c not in labels.columns]
    if missing:
        raise KeyError(f"the labels have no column {missing[0]} (does the labeler label {attribute!r} "
                       f"with classes {classes}?)")
    return labels[columns].to_numpy(dtype=float)


def fairness_metrics(labels: pd.DataFrame, labeler, setting, tolerance: float) -> dict:
    """Every fairness number of the setting's (joint) attribute distribution, with intervals.

    Beside FD: fd_floor / fd_floor_q95 (mean and 95% quantile of the FD a generator exactly on
    target shows at this n, F.fd_noise_floor), fd_within_noise (fd <= fd_floor_q95),
    fd_corrected (F.fd_bias_corrected: comparable across n). chi2_p is the p-value of
    F.multinomial_gof and chi2_method says which test gave it. verdict is "on_target",
    "off_target" or "inconclusive" (F.fairness_verdict at the tolerance), with n_needed (valid
    samples that would settle an inconclusive verdict) and samples_needed (images, allowing for
    the invalid rate). p_intervals are per class, p_intervals_simultaneous hold all at once.
    """
    class_lists = setting.class_lists()
    attributes = setting.attributes
    for a, classes in zip(attributes, class_lists, strict=True):
        if a not in labeler.attributes:
            raise KeyError(f"labeler {labeler.name} does not label {a!r}; it labels {', '.join(labeler.attributes)}")
        if list(labeler.attributes[a]) != list(classes):
            raise KeyError(f"labeler {labeler.name} labels {a} as {labeler.attributes[a]}, the suite expects {classes}")
    valid = labels["valid"].to_numpy(dtype=bool)
    probs = [label_matrix(labels, a, c)[valid] for a, c in zip(attributes, class_lists, strict=True)]
    hard = [p.argmax(1) for p in probs]
    ks = [len(c) for c in class_lists]
    joint, k = F.joint_labels(hard, ks)
    soft = probs[0]
    for p in probs[1:]:
        soft = (soft[:, :, None] * p[:, None, :]).reshape(len(soft), -1)
    target = np.asarray(setting.target_vector())
    n_valid = int(valid.sum())
    result: dict = {"n": len(labels), "n_valid": n_valid, "invalid_rate": F.invalid_rate(valid),
                    "classes": setting.joint_classes(), "target": target.tolist(),
                    "invalid_reasons": labels.loc[~valid, "reason"].value_counts().to_dict()}
    if n_valid == 0:
        return {**result, "fd": None, "fd_lo": None, "fd_hi": None, "fd_soft": None, "kl": None,
                "chi2_p": None, "tost_p": None, "equivalent": None}
    counts = np.bincount(joint, minlength=k)
    p_hat = counts / n_valid
    fd_lo, fd_hi = F.bootstrap_fd_interval(joint, k, target, n_resamples=BOOTSTRAP_RESAMPLES)
    gof = F.multinomial_gof(counts, target)
    tost = F.tost_equivalence(counts, target, tolerance)
    verdict = F.fairness_verdict(counts, target, tolerance)
    intervals = F.proportion_intervals(counts)
    fd = F.fairness_discrepancy(p_hat, target)
    floor, floor_q95 = F.fd_noise_floor(n_valid, target)
    n_needed = verdict["n_needed"]
    result.update({
        "counts": counts.tolist(), "p_hat": p_hat.tolist(), "p_soft": F.soft_proportions(soft).tolist(),
        "p_intervals": np.asarray(intervals).tolist(),
        "p_intervals_simultaneous": F.proportion_intervals(counts, method="goodman").tolist(),
        "fd": fd, "fd_lo": fd_lo, "fd_hi": fd_hi,
        "fd_floor": floor, "fd_floor_q95": floor_q95, "fd_within_noise": bool(fd <= floor_q95),
        "fd_corrected": F.fd_bias_corrected(counts, target),
        "fd_soft": F.fairness_discrepancy(F.soft_proportions(soft), target),
        "kl": F.kl_to_target(p_hat, target), "kl_reverse": F.kl_to_target(p_hat, target, direction="reverse"),
        "literature": {"heim_imbalance": F.mean_absolute_imbalance(p_hat), "deviation_ratio": F.deviation_ratio(p_hat),
                       "normalized_entropy": F.normalized_entropy(p_hat),
                       "soft_fd": F.fairness_discrepancy(F.soft_proportions(soft), np.full(k, 1 / k))},
        "chi2": gof["statistic"], "chi2_p": gof["p_value"], "chi2_method": gof["method"],
        "tost_p": tost["p_value"], "equivalent": bool(tost["equivalent"]),
        "tost_per_class": np.asarray(tost["p_values"]).tolist(), "tolerance": tolerance,
        "verdict": verdict["verdict"], "off_target_p": verdict["off_target_p"], "n_needed": n_needed,
        "samples_needed": None if n_needed is None else int(np.ceil(n_needed * len(labels) / n_valid)),
        "per_attribute": {a: np.bincount(h, minlength=kk).tolist() for a, h, kk in zip(attributes, hard, ks,
                                                                                         strict=True)},
    })
    if len(attributes) > 1:
        table = F.intersectional_table(hard, ks)
        result["small_cells"] = [setting.joint_classes()[i] for i in table["small_cells"]]
    confusion = getattr(labeler, "confusion", None)
    matrices = confusion() if confusion is not None else {}
    if all(a in matrices for a in attributes):  # a validation may cover only some attributes
        counts_per = [np.asarray(matrices[a]) for a in attributes]
        C = F.joint_confusion([F.confusion_from_counts(c) for c in counts_per])
        # each attribute's matrix is resampled from its own labelled counts (never fake joint counts)
        estimate = F.error_aware_interval(joint, counts_per, k, n_resamples=ERROR_AWARE_RESAMPLES, target=target)
        result["error_aware"] = {key: np.asarray(estimate[key]).tolist()
                                 for key in ("p", "lo", "hi", "lo_simultaneous", "hi_simultaneous")}
        result["error_aware"].update({"fd": estimate["fd"], "fd_lo": estimate["fd_lo"], "fd_hi": estimate["fd_hi"],
                                      "confusion": C.tolist()})
    return result


def labeler_agreement(tables: dict[str, pd.DataFrame], setting) -> dict[str, dict[str, float]]:
    """Cohen's kappa per attribute for every pair of labelers that label it, on the images
    both judged valid (tables are aligned by seed)."""
    out: dict[str, dict[str, float]] = {}
    names = list(tables)
    for attribute, classes in zip(setting.attributes, setting.class_lists(), strict=True):
        columns = [f"p:{attribute}:{c}" for c in classes]
        usable = [n for n in names if all(c in tables[n].columns for c in columns)]
        for i, a in enumerate(usable):
            for b in usable[i + 1:]:
                both = tables[a]["valid"].to_numpy(bool) & tables[b]["valid"].to_numpy(bool)
                if not both.any():
                    continue
                labels_a = tables[a][columns].to_numpy()[both].argmax(1)
                labels_b = tables[b][columns].to_numpy()[both].argmax(1)
                out.setdefault(attribute, {})[f"{a}|{b}"] = F.cohens_kappa(labels_a, labels_b, len(classes))
    return out
