"""NudeNetLabeler: nudenet's real YOLOv8n detector on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nudenet")

from audit.labelers.base import to_uint8_rgb
from audit.labelers.nudenet import NudeNetLabeler


@pytest.fixture(scope="module")
def labeler():
    return NudeNetLabeler(batch_size=4)


def test_astronaut_is_female_and_non_faces_are_invalid(labeler, astronaut, gray, lfw, check, resize):
    images = torch.cat([astronaut, resize(gray, 512), resize(lfw[[150, 199]], 512)])
    result = labeler.label(images)
    check(result, labeler, 4)
    assert labeler.attributes == {"gender": ["female", "male"]}
    assert result.valid.tolist() == [True, False, False, False]
    assert all("no face detected" in r for r in result.reasons[1:])
    assert labeler.attributes["gender"][result.hard("gender")[0]] == "female"
    assert result.probs["gender"][0, 0] > 0.9


def test_agrees_with_nudedetector_detect(labeler, astronaut, gray, lfw, resize):
    """Validity and class match the package's own detect() (highest-scoring face detection),
    across batch boundaries (batch_size 4, 7 images)."""
    from nudenet import NudeDetector

    images = torch.cat([astronaut, resize(gray, 512), resize(lfw[[0, 1, 2, 150, 151]], 512)])
    result = labeler.label(images)
    detector = NudeDetector()
    for i, rgb in enumerate(to_uint8_rgb(images)):
        faces = [d for d in detector.detect(np.ascontiguousarray(rgb[..., ::-1])) if d["class"].startswith("FACE_")]
        assert result.valid[i] == bool(faces)
        if faces:
            best = max(faces, key=lambda d: d["score"])
            assert labeler.attributes["gender"][result.hard("gender")[i]] == best["class"][5:].lower()
