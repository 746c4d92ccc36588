"""The committed zoo weights load and do what the zoo promises (never retrained here)."""

import json

import numpy as np
import pytest
import torch

from audit.labelers.synthfaces import SynthFacesLabeler
from audit.zoo import WEIGHTS_DIR, zoo_path
from audit.zoo.synthfaces import ATTRIBUTES, BIASED_WORLD, UNIFORM_WORLD, generate


def test_zoo_weights_stay_small():
    total = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file())
    assert total <= 40e6, f"zoo weights take {total / 1e6:.1f} MB (limit 40 MB)"


@pytest.mark.parametrize("name", ["synthfaces-eval", "synthfaces-pseudo"])
def test_labelers_are_accurate_on_fresh_ground_truth(name):
    labeler = SynthFacesLabeler(name)
    batch = generate(2000, UNIFORM_WORLD, seed=2024)
    result = labeler.label(batch.tensor() / 2 + 0.5)
    for attribute in ATTRIBUTES:
        accuracy = (result.hard(attribute) == batch.attributes[attribute]).mean()
        assert accuracy >= 0.97, (attribute, accuracy)
    confusion = json.loads((zoo_path(name) / "confusion.json").read_text())
    assert confusion["heldout"]["n"] == 10_000
    for attribute, entry in confusion["attributes"].items():
        assert np.asarray(entry["confusion"]).sum() == 10_000 and entry["accuracy"] >= 0.97, attribute


def test_labelers_differ_in_architecture_and_data():
    eval_config = json.loads((zoo_path("synthfaces-eval") / "config.json").read_text())
    pseudo_config = json.loads((zoo_path("synthfaces-pseudo") / "config.json").read_text())
    assert eval_config["channels"] != pseudo_config["channels"]
    assert eval_config["kernel_size"] != pseudo_config["kernel_size"]
    assert eval_config["data_seed"] != pseudo_config["data_seed"]


def test_fid_extractor_separates_worlds():
    """FID[synthfaces] between two ground-truth sets is small; against a differently biased
    world (uniform marginals) it is clearly larger."""
    from audit.metrics.fid import fid_between

    def images(world, seed):
        return generate(500, world, seed=seed).tensor() / 2 + 0.5

    reference = images(BIASED_WORLD, 1)
    same = fid_between(reference, images(BIASED_WORLD, 2))
    shifted = fid_between(reference, images(UNIFORM_WORLD, 3))
    blurred = torch.nn.functional.avg_pool2d(images(BIASED_WORLD, 4), 3, 1, 1)
    assert shifted > 3 * same and fid_between(reference, blurred) > 3 * same, (same, shifted)


def test_ddpm_weights_produce_faces_the_labeler_recognises():
    from audit.models.adapter import ModelAdapter

    adapter = ModelAdapter.from_directory(zoo_path("synthfaces-ddpm"), model_id="zoo:synthfaces-ddpm")
    images = adapter.generate(list(range(16)), steps=10).images
    result = SynthFacesLabeler("synthfaces-eval").label(images)
    confident = np.mean([(result.probs[a].max(1) >= 0.9).mean() for a in ATTRIBUTES])
    assert confident >= 0.8, confident
    assert 0.3 < images.mean() < 0.8 and images.std() > 0.1  # not blank, no colour collapse
