"""synthfaces-clip: the recipe trains, resumes and exports a CLIP that the generic loader loads;
the committed CLIP labels fresh ground truth zero-shot; it runs as a labeler and backs CLIP
score through the runner."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from audit.zoo import zoo_path
from audit.zoo.recipes import RECIPES
from audit.zoo.synthfaces import ATTRIBUTE_PHRASES, ATTRIBUTES, UNIFORM_WORLD, generate
from audit.zoo.train_clip import contrastive_loss, positives, train, training_batch

TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


def tiny_recipe(**changes):
    recipe = RECIPES["synthfaces-clip"]
    return dataclasses.replace(recipe, vision={**recipe.vision, **TINY}, text={**recipe.text, **TINY},
                               projection_dim=8, batch_size=8, warmup_steps=1, **changes)


def test_captions_describe_the_mentioned_ground_truth_and_batches_repeat():
    recipe = tiny_recipe(steps=4)
    images, captions, attributes, mentioned = training_batch(recipe, 3)
    again = training_batch(recipe, 3)
    assert torch.equal(images, again[0]) and captions == again[1]
    assert not torch.equal(images, training_batch(recipe, 4)[0])
    for caption, row, mask in zip(captions, attributes, mentioned, strict=True):
        for k, (attribute, classes) in enumerate(ATTRIBUTES.items()):
            if mask[k]:
                assert any(p in caption for p in ATTRIBUTE_PHRASES[attribute][classes[row[k]]]), (caption, attribute)


def test_every_true_caption_is_a_positive():
    # image 0: dark skin, long hair; image 1: dark skin, short hair; image 2: light skin, long hair
    attributes = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0]])
    mentioned = np.zeros((3, 5), dtype=bool)
    mentioned[0, 0] = True  # caption 0: "... with dark skin": true of images 0 and 1
    mentioned[1, 1] = True  # caption 1: "... with short hair": true of image 1 only
    mentioned[2, :2] = True  # caption 2: "... light skin, long hair": true of image 2 only
    expected = [[True, False, False], [True, True, False], [False, False, True]]
    assert positives(attributes, mentioned).tolist() == expected


def test_loss_is_clips_loss_when_each_image_has_one_caption_and_spares_true_duplicates():
    torch.manual_seed(0)
    logits = torch.randn(6, 6) * 3
    arange = torch.arange(6)
    clip = (torch.nn.functional.cross_entropy(logits, arange) + torch.nn.functional.cross_entropy(logits.T, arange)) / 2
    torch.testing.assert_close(contrastive_loss(logits, torch.eye(6, dtype=torch.bool)), clip)
    # caption 1 is also true of image 0: raising that pair's logit lowers the loss instead of raising it
    both = torch.eye(6, dtype=torch.bool)
    both[0, 1] = True
    flat = torch.zeros(6, 6)
    raised = flat.clone()
    raised[0, 1] = 2.0
    assert contrastive_loss(raised, both) < contrastive_loss(flat, both)
    one = torch.eye(6, dtype=torch.bool)
    assert contrastive_loss(raised, one) > contrastive_loss(flat, one)  # plain CLIP would push it down


def test_recipe_trains_resumes_and_exports_a_loadable_clip(tmp_path):
    from transformers import CLIPModel

    from audit.labelers.clip_zeroshot import load_clip
    from audit.zoo.labelers import SynthFacesClipLabeler

    work, out = tmp_path / "work", tmp_path / "out"
    assert train(tiny_recipe(steps=3), work, out, max_steps=2, log=lambda s: None, heldout=200) == 2
    messages = []
    assert train(tiny_recipe(steps=3), work, out, log=messages.append, heldout=200) == 3
    assert any("resumed" in m and "step 2" in m for m in messages)
    assert json.loads((out / "training.json").read_text())["steps"] == 3
    model, tokenizer, processor = load_clip(out)  # the loader that serves a real CLIP
    assert isinstance(model, CLIPModel) and model.config.vision_config.image_size == 32
    assert tokenizer("a photo of a person with gray hair").input_ids[-1] == tokenizer.eos_token_id
    batch = generate(4, UNIFORM_WORLD, seed=5)
    pixels = processor(images=list(batch.images), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, batch.tensor())  # the processor reproduces the training input
    measured = json.loads((out / "confusion.json").read_text())
    assert measured["heldout"]["n"] == 200 and set(measured["retrieval"]) == {"image_to_text_64", "text_to_image_100"}
    assert np.asarray(measured["attributes"]["hair_color"]["confusion"]).sum() == 200
    labeler = SynthFacesClipLabeler(model_path=out)
    result = labeler.label(batch.tensor() / 2 + 0.5)
    assert labeler.attributes == {a: list(c) for a, c in ATTRIBUTES.items()}
    assert result.probs["hair_color"].shape == (4, 4) and result.valid.all()
    np.testing.assert_allclose(result.probs["smile"].sum(1), 1, atol=1e-5)


def test_missing_zoo_clip_is_one_clear_error(tmp_path):
    from audit.zoo.labelers import SynthFacesClipLabeler

    with pytest.raises(FileNotFoundError, match="diffaudit zoo train synthfaces-clip"):
        SynthFacesClipLabeler(model_path=tmp_path)


committed = pytest.mark.skipif(not (zoo_path("synthfaces-clip") / "config.json").exists(),
                               reason="synthfaces-clip not trained")


@committed
def test_committed_clip_labels_fresh_ground_truth_zero_shot():
    from audit.zoo.labelers import SynthFacesClipLabeler

    directory = zoo_path("synthfaces-clip")
    assert sum(f.stat().st_size for f in directory.iterdir()) <= 8e6
    labeler = SynthFacesClipLabeler()
    batch = generate(300, UNIFORM_WORLD, seed=2025)
    result = labeler.label(batch.tensor() / 2 + 0.5)
    for attribute in ATTRIBUTES:
        accuracy = (result.hard(attribute) == batch.attributes[attribute]).mean()
        assert accuracy >= (0.8 if attribute == "hair_color" else 0.9), (attribute, accuracy)
    measured = json.loads((directory / "confusion.json").read_text())
    assert measured["heldout"]["n"] == 10_000
    for attribute, entry in measured["attributes"].items():
        assert entry["accuracy"] >= (0.8 if attribute == "hair_color" else 0.9), attribute


def test_zoo_cells_default_to_the_zoo_clip():
    from audit.run.measure import cell_clip_model

    zoo = SimpleNamespace(model=SimpleNamespace(source="zoo:synthfaces-t2i"))
    local = SimpleNamespace(model=SimpleNamespace(source="/models/sd15"))
    assert cell_clip_model(SimpleNamespace(clip_model="/clip"), zoo) == ("/clip", "/clip")
    assert cell_clip_model(SimpleNamespace(clip_model=None), local) is None
    if (zoo_path("synthfaces-clip") / "config.json").exists():
        assert cell_clip_model(SimpleNamespace(clip_model=None), zoo) == (str(zoo_path("synthfaces-clip")),
                                                                          "zoo:synthfaces-clip")


@committed
def test_registered_labeler_and_clip_score_through_the_runner(tmp_path):
    from audit.run.suite import run_suite
    from audit.spec import load_suite

    long = "a photo of a person with dark skin, " + "seen in soft daylight from a little distance, " * 6

    suite = {
        "name": "clip", "samples": 6, "batch_size": 6, "seed": 3, "metrics": ["fairness", "clip"],
        "models": [{"name": "t2i", "source": "zoo:synthfaces-t2i", "steps": 2, "guidance_scale": 2.0,
                    "prompts": ["a photo of a person with dark skin", long]}],
        "methods": [{"name": "none"}], "settings": [{"attributes": ["skin_tone"], "target": "uniform"}],
        "labelers": ["synthfaces-eval", "synthfaces-clip"],
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    frame = run_suite(load_suite(tmp_path / "suite.yaml"), tmp_path / "out")
    assert sorted(frame["labeler"]) == ["synthfaces-clip"] * 2 + ["synthfaces-eval"] * 2
    assert (frame["status"] == "done").all() and frame["clip_score"].notna().all()
    [long_cell] = (tmp_path / "out" / "cells").glob("*seen*")  # cell folders name their prompt
    [cell] = set((tmp_path / "out" / "cells").iterdir()) - {long_cell}
    truncated = json.loads((long_cell / "metrics.json").read_text())["clip_score"]["truncated"]
    events = (tmp_path / "out" / "events.log").read_text()
    assert truncated == 6 and "6 of 6 prompts are longer than the CLIP's 32 tokens" in events
    labels = pd.read_parquet(cell / "labels-synthfaces-clip.parquet")
    probs = labels[["p:skin_tone:light", "p:skin_tone:dark"]].to_numpy()
    assert len(labels) == 6 and np.allclose(probs.sum(1), 1, atol=1e-5)
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["clip_score"]["model"] == "zoo:synthfaces-clip" and metrics["clip_score"]["value"] >= 0
    assert metrics["clip_score"]["truncated"] == 0
    assert "error_aware" in metrics["labelers"]["synthfaces-clip"]  # its measured confusion is used
    assert "synthfaces-clip|synthfaces-eval" in metrics["agreement"]["skin_tone"] or \
        "synthfaces-eval|synthfaces-clip" in metrics["agreement"]["skin_tone"]
