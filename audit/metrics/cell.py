"""Fairness metrics of one cell under one evaluation labeler (from its cached label table)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.metrics import functional as F

BOOTSTRAP_RESAMPLES = 1000


def label_matrix(labels: pd.DataFrame, attribute: str, classes: list[str]) -> np.ndarray:
    """[N, K] probabilities of one attribute from a label table's p:<attribute>:<class> columns."""
    columns = [f"p:{attribute}:{c}" for c in classes]
    missing = [c for c in columns if c not in labels.columns]
    if missing:
        raise KeyError(f"the labels have no column {missing[0]} (does the labeler label {attribute!r} "
                       f"with classes {classes}?)")
    return labels[columns].to_numpy(dtype=float)


def fairness_metrics(labels: pd.DataFrame, labeler, setting, tolerance: float) -> dict:
    """Every fairness number of the setting's (joint) attribute distribution, with intervals."""
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
    chi2, chi2_p = F.chi_square_gof(counts, target)
    tost = F.tost_equivalence(counts, target, tolerance)
    intervals = F.proportion_intervals(counts)
    result.update({
        "counts": counts.tolist(), "p_hat": p_hat.tolist(), "p_soft": F.soft_proportions(soft).tolist(),
        "p_intervals": np.asarray(intervals).tolist(),
        "fd": F.fairness_discrepancy(p_hat, target), "fd_lo": fd_lo, "fd_hi": fd_hi,
        "fd_soft": F.fairness_discrepancy(F.soft_proportions(soft), target),
        "kl": F.kl_to_target(p_hat, target), "kl_reverse": F.kl_to_target(p_hat, target, direction="reverse"),
        "chi2": chi2, "chi2_p": chi2_p, "tost_p": tost["p_value"], "equivalent": bool(tost["equivalent"]),
        "tost_per_class": np.asarray(tost["p_values"]).tolist(), "tolerance": tolerance,
        "per_attribute": {a: np.bincount(h, minlength=kk).tolist() for a, h, kk in zip(attributes, hard, ks,
                                                                                         strict=True)},
    })
    if len(attributes) > 1:
        table = F.intersectional_table(hard, ks)
        result["small_cells"] = [setting.joint_classes()[i] for i in table["small_cells"]]
    confusion = getattr(labeler, "confusion", None)
    if confusion is not None:
        matrices = confusion()
        C = F.joint_confusion([F.confusion_from_counts(matrices[a]) for a in attributes])
        counts_per = [np.asarray(matrices[a]) for a in attributes]
        joint_counts = _joint_confusion_counts(counts_per)
        estimate = F.error_aware_interval(joint, joint_counts, k, n_resamples=BOOTSTRAP_RESAMPLES)
        p = np.asarray(estimate["p"])
        result["error_aware"] = {"p": p.tolist(), "lo": np.asarray(estimate["lo"]).tolist(),
                                 "hi": np.asarray(estimate["hi"]).tolist(),
                                 "fd": F.fairness_discrepancy(p, target),
                                 "confusion": C.tolist()}
    return result


def _joint_confusion_counts(counts: list[np.ndarray]) -> np.ndarray:
    """Joint confusion counts assuming independent errors across attributes: the Kronecker
    product of the row-normalised matrices scaled by the joint row totals."""
    C = F.joint_confusion([F.confusion_from_counts(c) for c in counts])
    totals = np.ones(1)
    for c in counts:
        totals = np.outer(totals, np.asarray(c).sum(1)).ravel()
    per_row = totals / totals.max() * min(np.asarray(c).sum() for c in counts)
    return np.round(C * per_row[:, None]).astype(int)


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
