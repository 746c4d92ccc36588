"""The zoo's error-aware bar: on SynthFaces with exact ground truth, the error-aware estimate from a zoo
labeler (with its shipped confusion matrices) brackets the true proportions for every attribute,
alone and jointly, through the same code path a cell uses. The zoo labelers are >= 99.9%
accurate on held-out faces, so here the correction is small and the interval mostly sampling
noise; tests/metrics/test_functional.py covers 85%-accurate labelers by simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.metrics.cell import fairness_metrics
from audit.spec import SettingSpec
from audit.zoo.synthfaces import ATTRIBUTES, BIASED_WORLD, generate

N = 2000


@pytest.fixture(scope="module")
def faces():
    return generate(N, BIASED_WORLD, seed=20_240_404)  # seeds outside every training and held-out set


@pytest.mark.parametrize("name", ["synthfaces-eval", "synthfaces-pseudo"])
def test_error_aware_estimate_brackets_the_truth(faces, name):
    from audit.zoo.labelers import SynthFacesLabeler

    labeler = SynthFacesLabeler(name)
    result = labeler.label(faces.tensor() / 2 + 0.5)
    table = pd.DataFrame({f"p:{a}:{c}": result.probs[a][:, j] for a, classes in ATTRIBUTES.items()
                          for j, c in enumerate(classes)})
    table["valid"], table["reason"] = result.valid, result.reasons
    settings = [[a] for a in ATTRIBUTES] + [["skin_tone", "eyeglasses", "hair_color"]]
    for attributes in settings:
        setting = SettingSpec(attributes=attributes)
        ks = [len(ATTRIBUTES[a]) for a in attributes]
        joint = np.ravel_multi_index([faces.attributes[a] for a in attributes], ks)  # joint_labels' order
        truth = np.bincount(joint, minlength=int(np.prod(ks))) / N
        estimate = fairness_metrics(table, labeler, setting, tolerance=0.05)["error_aware"]
        p, lo, hi = (np.asarray(estimate[key]) for key in ("p", "lo", "hi"))
        assert np.all(lo <= truth + 1e-12) and np.all(truth <= hi + 1e-12), (attributes, truth, lo, hi)
        assert np.abs(p - truth).max() < 0.01, (attributes, p, truth)
        if len(attributes) == 1:  # the biased world really is biased: the estimate is not just uniform
            assert np.abs(truth - np.asarray(BIASED_WORLD.marginals[attributes[0]])).max() < 0.03
