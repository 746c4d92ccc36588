"""fairness_metrics' new keys on a cell: the quickstart's small cells come out inconclusive with
the samples that would settle them, and every key is plain JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit.metrics.cell import fairness_metrics
from audit.spec import SettingSpec

CLASSES = {"eyeglasses": ["no", "yes"], "hair_color": ["black", "brown", "blond", "gray"]}


class Labeler:
    name = "simulated"
    attributes = CLASSES

    def __init__(self, confusion: dict | None = None):
        if confusion is not None:
            self.confusion = lambda: confusion


def table(labels: dict[str, np.ndarray], invalid: int = 0) -> pd.DataFrame:
    n = len(next(iter(labels.values())))
    columns = {f"p:{a}:{c}": np.append((labels[a] == j).astype(float), np.full(invalid, 0.5))
               for a in labels for j, c in enumerate(CLASSES[a])}
    valid = np.append(np.ones(n, bool), np.zeros(invalid, bool))
    return pd.DataFrame({**columns, "valid": valid, "reason": np.where(valid, "", "no face")})


def test_quickstart_cell_on_target_at_64_samples_is_inconclusive():
    labels = table({"eyeglasses": np.repeat([0, 1], 32)}, invalid=4)
    m = fairness_metrics(labels, Labeler(), SettingSpec(attributes=["eyeglasses"]), tolerance=0.05)
    assert m["fd"] == 0.0 and m["fd_corrected"] == 0.0 and m["fd_within_noise"] is True
    assert 0 < m["fd_floor"] < m["fd_floor_q95"]
    assert m["verdict"] == "inconclusive" and m["equivalent"] is False
    assert m["n_needed"] > 64 and m["samples_needed"] == int(np.ceil(m["n_needed"] * 68 / 64))
    assert m["chi2_method"] == "asymptotic" and m["chi2_p"] == pytest.approx(1.0)
    assert np.asarray(m["p_intervals_simultaneous"]).shape == (2, 2)
    json.dumps(m)                    # every value plain JSON (no numpy scalars)
    assert isinstance(m["n_needed"], int) and isinstance(m["fd_within_noise"], bool)


def test_small_joint_cell_uses_the_exact_test_and_large_cells_get_verdicts():
    rng = np.random.default_rng(0)
    setting = SettingSpec(attributes=["eyeglasses", "hair_color"])
    small = table({"eyeglasses": rng.integers(0, 2, 24), "hair_color": rng.integers(0, 4, 24)})
    m = fairness_metrics(small, Labeler(), setting, tolerance=0.05)
    assert m["chi2_method"] in ("exact", "monte_carlo") and m["verdict"] == "inconclusive"
    fair = table({"eyeglasses": np.repeat([0, 1], 20_000)})
    assert fairness_metrics(fair, Labeler(), SettingSpec(attributes=["eyeglasses"]), 0.05)["verdict"] == "on_target"
    biased = table({"eyeglasses": np.repeat([0, 1], [700, 300])})
    m = fairness_metrics(biased, Labeler(), SettingSpec(attributes=["eyeglasses"]), 0.05)
    assert m["verdict"] == "off_target" and m["n_needed"] is None and m["samples_needed"] is None
    assert m["fd_within_noise"] is False and m["fd_corrected"] < m["fd"]


def test_error_aware_keys_for_a_joint_setting():
    rng = np.random.default_rng(1)
    confusion = {"eyeglasses": np.array([[900, 100], [80, 920]]),
                 "hair_color": rng.multinomial(500, np.full((4, 4), 0.05) + np.eye(4) * 0.8)}
    labels = table({"eyeglasses": rng.integers(0, 2, 800), "hair_color": rng.integers(0, 4, 800)})
    m = fairness_metrics(labels, Labeler(confusion), SettingSpec(attributes=["eyeglasses", "hair_color"]), 0.05)
    ea = m["error_aware"]
    for key in ("p", "lo", "hi", "lo_simultaneous", "hi_simultaneous"):
        assert len(ea[key]) == 8, key
    assert np.all(np.asarray(ea["lo_simultaneous"]) <= np.asarray(ea["p"]) + 1e-12)
    assert ea["fd_lo"] <= ea["fd"] <= ea["fd_hi"]
    json.dumps(m)


def test_literature_metrics_of_a_known_cell():
    """700 / 300 hard labels (one-hot probabilities): HEIM |0.3 - 0.5|, deviation 0.2 / 0.5, H(0.7, 0.3) / log 2,
    soft FD to uniform = the hard FD to uniform; all relative to uniform even for a 0.7 / 0.3 target."""
    labels = table({"eyeglasses": np.repeat([0, 1], [700, 300])})
    setting = SettingSpec(attributes=["eyeglasses"], target=[0.7, 0.3])
    m = fairness_metrics(labels, Labeler(), setting, 0.05)
    assert m["fd"] == pytest.approx(0.0)
    lit = m["literature"]
    assert lit["heim_imbalance"] == pytest.approx(0.2) and lit["deviation_ratio"] == pytest.approx(0.4)
    assert lit["normalized_entropy"] == pytest.approx(-(0.7 * np.log(0.7) + 0.3 * np.log(0.3)) / np.log(2))
    assert lit["soft_fd"] == pytest.approx(0.2 * np.sqrt(2))
