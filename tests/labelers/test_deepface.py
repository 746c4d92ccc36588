"""DeepFaceLabeler: deepface's real analyze() (opencv haar detection, alignment, preprocessing,
the pytorch clients' predict, postprocessing) with small stand-in networks injected at deepface's
model-building seam: each pytorch demography module's `base_model()`, which its `load_model()`
calls before loading the weight file from $DEEPFACE_HOME/.deepface/weights. The stand-ins keep
the real input/output contracts ((n, 3, 224, 224) BGR -> softmax; emotion (n, 1, 48, 48) ->
softmax over 7) and their weights are saved as the files deepface expects, so the real
weight-file lookup and torch.load/load_state_dict path runs too. Nothing is downloaded: the
network functions deepface would use are made to fail the test if called.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch")
os.environ.setdefault("DEEPFACE_LOG_LEVEL", "40")
pytest.importorskip("deepface")

from audit.labelers.deepface import (
    EMOTIONS,
    RACES,
    DeepFaceLabeler,
    DeepFaceWeightsMissing,
)

FILES = {"Gender": "gender_model_weights.pth", "Race": "race_model_single_batch.pth",
         "Age": "age_model_weights.pth", "Emotion": "facial_expression_model_weights.pth"}
CLASSES = {"Gender": 2, "Race": 6, "Age": 101, "Emotion": 7}


class TinyClassifier(nn.Module):
    """Stand-in for deepface's VggFaceClassifier / EmotionModel: channel means -> linear -> softmax."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return torch.softmax(self.head(x.mean((2, 3)) / 255.0), dim=1)


def stand_in(name: str) -> TinyClassifier:
    return TinyClassifier(1 if name == "Emotion" else 3, CLASSES[name])


def saved_weights(name: str) -> dict:
    """Deterministic weights; the gender bias makes 'Woman' certain, so the test can tell that
    the file (not the stand-in's random init) was loaded."""
    torch.manual_seed(len(name))
    model = stand_in(name)
    with torch.no_grad():
        if name == "Gender":
            model.head.weight.zero_()
            model.head.bias.copy_(torch.tensor([4.0, -4.0]))
        if name == "Age":  # expected age around 30
            model.head.weight.zero_()
            model.head.bias.copy_(-0.5 * (torch.arange(101.0) - 30) ** 2 / 4.0)
    return model.state_dict()


@pytest.fixture
def deepface_env(tmp_path, monkeypatch):
    """A DEEPFACE_HOME in tmp_path, stand-in models at the seam, deepface's model cache cleared,
    and any network access failing the test. Returns the weights folder (empty)."""
    from deepface.commons import backend_utils, weight_utils
    from deepface.modules import modeling

    assert backend_utils.get_backend_engine() == "pytorch"
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    weights = tmp_path / ".deepface" / "weights"
    weights.mkdir(parents=True)
    for name in FILES:
        module = importlib.import_module(f"deepface.models.demography.pytorch.{name}")
        monkeypatch.setattr(module, "base_model", lambda name=name: stand_in(name))
    monkeypatch.setattr(modeling, "cached_models", {task: {} for task in modeling.AVAILABLE_MODELS}, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"deepface tried to reach the network: {args} {kwargs}")

    monkeypatch.setattr(weight_utils.gdown, "download", no_network)
    monkeypatch.setattr(weight_utils, "ensure_source_is_reachable", no_network)
    monkeypatch.setattr(weight_utils.requests, "head", no_network)
    monkeypatch.setattr(weight_utils.requests, "get", no_network)
    return weights


def write_weights(weights, names=tuple(FILES)) -> None:
    for name in names:
        torch.save(saved_weights(name), weights / FILES[name])


def test_real_analyze_pipeline_with_stand_in_models(deepface_env, astronaut, gray, check, resize):
    from deepface import DeepFace
    from deepface.modules import modeling

    write_weights(deepface_env)
    labeler = DeepFaceLabeler(device="cpu")
    assert labeler.attributes == {"gender": ["woman", "man"], "race": RACES,
                                  "age": ["0-19", "20-39", "40-59", "60+"], "emotion": EMOTIONS}
    assert "pytorch backend" in labeler.source and "opencv" in labeler.source
    # the stand-ins were built through deepface's own seam, with the saved weights loaded
    gender_client = modeling.cached_models["facial_attribute"]["Gender"]
    assert isinstance(gender_client.model, TinyClassifier)
    torch.testing.assert_close(gender_client.model.head.bias, torch.tensor([4.0, -4.0]))

    result = labeler.label(torch.cat([astronaut, resize(gray, 512)]))
    check(result, labeler, 2)
    assert result.valid.tolist() == [True, False]
    assert result.reasons[1] == "no face detected (deepface opencv detector)"
    assert result.probs["gender"][0, 0] > 0.99  # the loaded weights say "Woman"
    assert result.hard("age")[0] == 1  # stand-in's expected age ~30 -> 20-39, one-hot
    assert result.probs["age"][0].tolist() == [0.0, 1.0, 0.0, 0.0]

    # identical to calling deepface directly on the BGR image
    bgr = np.ascontiguousarray((astronaut[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)[..., ::-1])
    (face,) = DeepFace.analyze(img_path=bgr, detector_backend="opencv", enforce_detection=True, silent=True)
    np.testing.assert_allclose(result.probs["race"][0], [face["race"][r] / 100 for r in RACES], rtol=1e-4)
    np.testing.assert_allclose(result.probs["emotion"][0], [face["emotion"][e] / 100 for e in EMOTIONS], rtol=1e-4)
    np.testing.assert_allclose(result.probs["gender"][0], [face["gender"]["Woman"] / 100, face["gender"]["Man"] / 100],
                               rtol=1e-4)


def test_missing_weights_raise_one_clear_error_without_downloading(deepface_env):
    write_weights(deepface_env, names=("Gender", "Age", "Emotion"))  # race weights absent
    with pytest.raises(DeepFaceWeightsMissing) as caught:
        DeepFaceLabeler()
    error = caught.value
    assert isinstance(error, FileNotFoundError)
    expected = str(deepface_env / "race_model_single_batch.pth")
    assert error.missing == ["race_model_single_batch.pth"] and error.paths == [expected]
    message = str(error)
    assert "race_model_single_batch.pth" in message and expected in message and "DEEPFACE_HOME" in message
    assert "gender_model_weights.pth" not in message
    # a labeler that does not need the race model builds fine from the same folder
    assert set(DeepFaceLabeler(actions=("gender", "age")).attributes) == {"gender", "age"}


def test_a_file_deleted_after_the_check_is_not_downloaded_either(deepface_env, astronaut):
    from deepface.modules import modeling

    write_weights(deepface_env)
    labeler = DeepFaceLabeler(actions=("gender",))
    (deepface_env / FILES["Gender"]).unlink()
    modeling.cached_models["facial_attribute"].clear()  # force deepface to load the model again
    with pytest.raises(DeepFaceWeightsMissing, match="gender_model_weights.pth"):
        labeler.label(astronaut)


def test_absent_package_gives_a_one_line_error(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "deepface" or m.startswith("deepface.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'diffaudit\[deepface\]'") as caught:
        DeepFaceLabeler()
    assert "\n" not in str(caught.value) and caught.value.__cause__ is None
