"""Semantic guidance: each image's noise prediction is edited toward its allocated class's phrase."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.methods.base import BatchContext
from audit.methods.semantic_guidance import SemanticGuidance
from audit.registry import check_params

PHRASES = ["with dark skin", "with light skin"]
PROMPT = "a photo of a person"


def batch_at(adapter, method, seeds, progress=0.5, steps=4):
    scheduler = type(adapter.scheduler).from_config(adapter.scheduler.config)
    scheduler.set_timesteps(steps)
    context = adapter.encode_prompts([PROMPT] * len(seeds))
    batch = BatchContext(adapter=adapter, scheduler=scheduler, seeds=seeds, prompts=[PROMPT] * len(seeds),
                         context=context, guidance_scale=1.0, steps=steps)
    batch.step_index = int(progress * steps)
    batch.t = int(scheduler.timesteps[batch.step_index])
    method.start_cell(seeds)
    method.start_batch(batch)
    x = adapter.initial_noise(seeds) * scheduler.init_noise_sigma
    batch.conditional = prediction(adapter, batch, x, [""] * len(seeds))  # as the sampling loop sets it
    return batch, x


def prediction(adapter, batch, x, phrases):
    context = adapter.encode_prompts([f"{PROMPT} {p}".strip() for p in phrases])
    with torch.no_grad():
        return adapter.unet_output(batch.scheduler.scale_model_input(x, batch.t), batch.t, context, 1.0)


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_the_edit_moves_each_noise_prediction_toward_its_allocated_class(tiny_text_adapter):
    seeds = list(range(8))
    method = SemanticGuidance(PHRASES, [0.5, 0.5], scale=2.0, threshold=0.0)
    batch, x = batch_at(tiny_text_adapter, method, seeds)
    classes = batch.state["allocated"].tolist()
    assert sorted(classes) == [0, 0, 0, 0, 1, 1, 1, 1]
    output = prediction(tiny_text_adapter, batch, x, [""] * len(seeds))
    edited = method.on_output(output, x, batch)
    toward = {c: prediction(tiny_text_adapter, batch, x, [PHRASES[c]] * len(seeds)) - output for c in (0, 1)}
    for i, c in enumerate(classes):
        change = edited[i] - output[i]
        assert torch.allclose(change, 2.0 * toward[c][i], atol=1e-5)  # scale x (class prediction - prompt's)
        assert cosine(change, toward[c][i]) > cosine(change, toward[1 - c][i])
    assert batch.state["edited_steps"] == 1


def test_threshold_keeps_the_largest_part_of_the_edit_per_image_and_channel(tiny_text_adapter):
    method = SemanticGuidance(PHRASES, [0.5, 0.5], threshold=0.9)
    batch, x = batch_at(tiny_text_adapter, method, [0, 1])
    output = torch.zeros_like(x)
    change = method.on_output(output, x, batch)
    kept = (change != 0).flatten(2).float().mean(2)
    assert torch.all((kept > 0.05) & (kept <= 0.11)), kept


def test_no_edit_during_the_warmup_or_after_stop(tiny_text_adapter):
    method = SemanticGuidance(PHRASES, [0.5, 0.5], warmup=0.5, stop=0.75)
    for progress, edited in ((0.25, False), (0.5, True), (0.75, False)):
        batch, x = batch_at(tiny_text_adapter, method, [0, 1], progress=progress)
        output = torch.randn_like(x)
        assert (not torch.equal(method.on_output(output, x, batch), output)) == edited
    out = tiny_text_adapter.generate([0, 1], prompts=[PROMPT] * 2, steps=4, guidance_scale=3.0, method=method)
    assert out.stats["edited_steps"] == 1 and "_edited" not in out.stats and torch.isfinite(out.images).all()


def test_the_edit_reads_the_prompts_prediction_guidance_already_made(tiny_text_adapter, monkeypatch):
    """Under classifier-free guidance the loop hands methods the conditional prediction it made,
    so an edited step evaluates the UNet on the allocated phrases only: 3 rows per image, not 4."""
    method = SemanticGuidance(PHRASES, [0.5, 0.5], warmup=0.0, threshold=0.0)
    seen, rows = [], []
    family = tiny_text_adapter.family
    call = family.call
    monkeypatch.setattr(family, "call", lambda x, t, context: rows.append(len(x)) or call(x, t, context))
    on_output = method.on_output
    monkeypatch.setattr(method, "on_output", lambda out, x, batch: seen.append((batch.t, x, batch.conditional))
                        or on_output(out, x, batch))
    tiny_text_adapter.generate([0, 1, 2], prompts=[PROMPT] * 3, steps=3, guidance_scale=3.0, method=method)
    assert rows == [6, 3] * 3
    monkeypatch.setattr(family, "call", call)
    t, x, conditional = seen[1]
    with torch.no_grad():
        alone = tiny_text_adapter.unet_output(x, t, tiny_text_adapter.encode_prompts([PROMPT] * 3), 1.0)
    assert torch.allclose(conditional, alone, atol=1e-5)


def test_classes_follow_the_target_over_the_cell_whatever_the_batch():
    method = SemanticGuidance(PHRASES, [0.1, 0.9])
    seeds = list(range(100))
    method.start_cell(seeds)
    counts = np.bincount(method.cell_choices(seeds), minlength=2)
    assert counts.tolist() == [10, 90]
    assert method.allocated(seeds[40:50]).tolist() == method.cell_choices(seeds)[40:50]


def test_applies_to_text_models_only(tiny_adapter):
    assert "needs a text-conditioned model" in SemanticGuidance(PHRASES, [0.5, 0.5]).not_applicable(tiny_adapter)


@pytest.mark.parametrize(("params", "message"), [
    ({"scale": 0}, "scale should be greater than 0"),
    ({"threshold": 1.0}, "threshold should be less than 1"),
    ({"warmup": 0.5, "stop": 0.5}, "warmup must be below stop"),
    ({"momentum": 0.1}, "unknown params 'momentum'"),
])
def test_bad_params_are_one_line_errors_at_suite_load(params, message):
    with pytest.raises(ValueError) as error:
        check_params(SemanticGuidance, params, "params")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_phrase_per_class_is_required():
    with pytest.raises(ValueError, match="one phrase per class"):
        SemanticGuidance(PHRASES, [0.2, 0.3, 0.5])


def test_an_image_does_not_depend_on_its_batch(tiny_text_adapter):
    method = SemanticGuidance(PHRASES, [0.5, 0.5], warmup=0.0)
    method.start_cell([0, 1, 2])
    together = tiny_text_adapter.generate([0, 1, 2], prompts=[PROMPT] * 3, steps=3, guidance_scale=3.0,
                                          method=method).images
    alone = tiny_text_adapter.generate([2], prompts=[PROMPT], steps=3, guidance_scale=3.0, method=method).images
    assert torch.equal(together[2], alone[0])
