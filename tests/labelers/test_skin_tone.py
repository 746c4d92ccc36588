"""SkinToneLabeler: stone's real pipeline (haar face detection, skin segmentation, Monk swatches)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("stone")

from audit.labelers.skin_tone import MONK, SkinToneLabeler


@pytest.fixture(scope="module")
def labeler():
    return SkinToneLabeler()


def test_astronaut_gets_a_monk_tone_and_non_faces_are_invalid(labeler, astronaut, gray, lfw, check, resize):
    images = torch.cat([astronaut, resize(gray, 512), torch.zeros(1, 3, 512, 512), resize(lfw[[150, 199]], 512)])
    result = labeler.label(images)
    check(result, labeler, 5)
    assert labeler.attributes == {"monk": MONK, "skin_tone_group": ["light", "medium", "dark"]}
    assert result.valid.tolist() == [True, False, False, False, False]
    assert all("no face detected" in r for r in result.reasons[1:])
    tone = result.hard("monk")[0]
    assert result.probs["monk"][0, tone] == 1.0  # stone gives a hard label: one-hot
    group = next(k for k, tones in enumerate(labeler.groups.values()) if tone + 1 in tones)
    assert result.probs["skin_tone_group"][0].tolist() == [float(k == group) for k in range(3)]
    assert os.environ.get("STONE_UPGRADE_FLAG")  # stone's PyPI version check stays off
    # reproducible: k-means is seeded per image
    again = labeler.label(astronaut)
    assert again.hard("monk")[0] == tone


def test_grayscale_faces_and_custom_groups(lfw, resize):
    groups = {"lighter": [1, 2, 3, 4, 5], "darker": [6, 7, 8, 9, 10]}
    labeler = SkinToneLabeler(groups=groups)
    assert labeler.attributes["skin_tone_group"] == ["lighter", "darker"]
    result = labeler.label(resize(lfw[:4], 200))  # LFW faces are grayscale: stone's black-and-white path
    assert result.valid.sum() >= 2
    monk, grouped = result.probs["monk"][result.valid], result.probs["skin_tone_group"][result.valid]
    np.testing.assert_array_equal(grouped[:, 0], monk[:, :5].sum(1))
    with pytest.raises(ValueError, match="exactly once"):
        SkinToneLabeler(groups={"a": [1, 2, 3], "b": [3, 4, 5, 6, 7, 8, 9, 10]})
