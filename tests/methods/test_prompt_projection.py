"""Prompt-embedding projection: the group directions leave the text embedding the UNet reads."""

from __future__ import annotations

import pytest
import torch

from audit.methods.prompt_projection import PromptProjection
from audit.registry import check_params

PHRASES = ["with dark skin", "with light skin"]
PROMPT = "a photo of a person"


def group_embeddings(adapter):
    return adapter.encode_prompts([f"{PROMPT} {p}" for p in PHRASES])


def test_a_linear_probe_on_the_projected_embedding_loses_the_group_direction(tiny_text_adapter):
    """The direction separating the two groups' raw embeddings (a difference-of-means probe)
    separates them no longer after the projection; the prompt's other content stays."""
    method = PromptProjection(PHRASES, energy=1.0)
    raw = group_embeddings(tiny_text_adapter)
    probe = (raw[0] - raw[1]).flatten()
    projected = method.project(raw, [PROMPT] * 2, [0, 1], tiny_text_adapter)
    assert float(probe @ (raw[0] - raw[1]).flatten()) > 0.1
    assert abs(float(probe @ (projected[0] - projected[1]).flatten())) < 1e-4 * float(probe @ probe)
    base = tiny_text_adapter.encode_prompts([PROMPT])
    kept = method.project(base, [PROMPT], [0], tiny_text_adapter)
    assert float((kept - base).norm()) < float(base.norm())  # removes a subspace, not the prompt
    assert 1 <= len(method.projection(tiny_text_adapter, PROMPT)["basis"]) <= raw.shape[-1]


def test_lower_energy_removes_fewer_directions(tiny_text_adapter):
    full = PromptProjection(PHRASES, energy=1.0).projection(tiny_text_adapter, PROMPT)
    part = PromptProjection(PHRASES, energy=0.5).projection(tiny_text_adapter, PROMPT)
    assert len(part["basis"]) < len(full["basis"]) and part["captured"] >= 0.5


def seen_context(adapter, seeds, method, guidance_scale=1.0):
    """The encoder_hidden_states the UNet received at its first call."""
    seen = []
    handle = adapter.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        adapter.generate(seeds, prompts=[PROMPT] * len(seeds), steps=2, guidance_scale=guidance_scale, method=method)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_the_unet_reads_the_projected_prompt_and_the_negative_prompt_is_left_alone(tiny_text_adapter,
                                                                                 guidance_scale):
    seeds = [3, 4]
    plain = seen_context(tiny_text_adapter, seeds, None, guidance_scale)
    method = PromptProjection(PHRASES, energy=1.0)
    seen = seen_context(tiny_text_adapter, seeds, method, guidance_scale)
    n = len(seeds)
    expected = method.project(plain[-n:], [PROMPT] * n, seeds, tiny_text_adapter)
    assert torch.allclose(seen[-n:], expected, atol=1e-6) and not torch.allclose(seen[-n:], plain[-n:])
    assert torch.equal(seen[:-n], plain[:-n])


def test_noise_moves_each_image_along_the_removed_directions_by_its_own_seed(tiny_text_adapter):
    method = PromptProjection(PHRASES, energy=1.0, noise=1.0)
    quiet = PromptProjection(PHRASES, energy=1.0)
    base = tiny_text_adapter.encode_prompts([PROMPT] * 3)
    noisy = method.project(base, [PROMPT] * 3, [7, 8, 9], tiny_text_adapter)
    clean = quiet.project(base, [PROMPT] * 3, [7, 8, 9], tiny_text_adapter)
    basis = method.projection(tiny_text_adapter, PROMPT)["basis"].float()
    shift = noisy - clean
    assert torch.allclose(shift - (shift @ basis.T) @ basis, torch.zeros_like(shift), atol=1e-5)  # in the subspace
    assert not torch.allclose(shift[0], shift[1])
    alone = method.project(base[2:], [PROMPT], [9], tiny_text_adapter)
    assert torch.allclose(alone[0], noisy[2])  # the seed's draw, whatever its batch


def test_applies_to_text_models_only(tiny_adapter):
    assert "needs a text-conditioned model" in PromptProjection(PHRASES).not_applicable(tiny_adapter)
    assert PromptProjection.not_applicable_to(False) and PromptProjection.not_applicable_to(True) is None


@pytest.mark.parametrize(("params", "message"), [
    ({"energy": 0}, "energy should be greater than 0"),
    ({"energy": 1.5}, "energy should be less than or equal to 1"),
    ({"noise": -1}, "noise should be greater than or equal to 0"),
    ({"rank": 2}, "unknown params 'rank'"),
])
def test_bad_params_are_one_line_errors_at_suite_load(params, message):
    with pytest.raises(ValueError) as error:
        check_params(PromptProjection, params, "params")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_identical_phrases_are_refused():
    with pytest.raises(ValueError, match="two different group phrases"):
        PromptProjection(["x", "x"])


def test_an_image_does_not_depend_on_its_batch(tiny_text_adapter):
    method = PromptProjection(PHRASES, noise=0.5)
    together = tiny_text_adapter.generate([0, 1, 2], prompts=[PROMPT] * 3, steps=3, guidance_scale=3.0,
                                          method=method).images
    alone = tiny_text_adapter.generate([2], prompts=[PROMPT], steps=3, guidance_scale=3.0, method=method).images
    assert torch.equal(together[2], alone[0])


def test_settings_that_differ_only_in_their_target_share_images():
    """The projection removes what the classes' phrases say and aims at no target: skin tone
    uniform and 0.1/0.9 make the same images, another attribute does not."""
    from audit.spec import Suite, plan

    suite = Suite.model_validate({
        "name": "s", "models": [{"name": "m", "source": "zoo:synthfaces-t2i"}],
        "methods": [{"name": "prompt_projection", "params": {"noise": 1.0}}],
        "settings": [{"attributes": ["skin_tone"], "target": "uniform"},
                     {"attributes": ["skin_tone"], "target": {"light": 0.1, "dark": 0.9}},
                     {"attributes": ["eyeglasses"], "target": "uniform"}],
        "samples": 8, "labelers": ["synthfaces-eval"]})
    uniform, skewed, eyeglasses = (c.image_key for c in plan(suite))
    assert uniform == skewed and eyeglasses != uniform
