"""Stable Diffusion 3 on a tiny random pipeline: diffusers parity, per-seed images, h-space at the
middle joint block (pooled image tokens), distribution and universal guidance."""

from __future__ import annotations

import pytest
import torch
from family_checks import (
    PROMPTS,
    assert_batch_invariant,
    assert_distribution_guidance_moves_the_reading,
    pipeline_images,
)

from audit.models.adapter import ModelAdapter


@pytest.fixture(scope="module")
def sd3(sd3_dir):
    return ModelAdapter.from_directory(sd3_dir)


def test_sd3_adapter_matches_the_sd3_pipeline(sd3):
    assert sd3.info["family"] == "sd3" and sd3.unet is None and sd3.conditional
    assert type(sd3.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"  # its own sampler, not DDIM
    for negative in ("", "a photo of a woman"):
        ours = sd3.generate([3, 4], prompts=PROMPTS, steps=3, guidance_scale=2.0, negative_prompt=negative).images
        assert ours.shape == (2, 3, 32, 32)
        expected = pipeline_images(sd3, [3, 4], prompt=PROMPTS, num_inference_steps=3, guidance_scale=2.0,
                                   negative_prompt=negative or None)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_sd3_images_do_not_depend_on_the_batch(sd3):
    assert_batch_invariant(sd3, guidance_scale=2.0)


def test_sd3_h_is_the_middle_blocks_image_stream_pooled_to_8x8(sd3, sd3_dir):
    hook = sd3.hspace()
    assert hook.module == "transformer_blocks.1" and hook.grid == (16, 16)
    out = sd3.generate([0, 1], prompts=PROMPTS, steps=2, guidance_scale=2.0, record_h=True)
    assert len(out.h) == 2 and out.h[0].shape == (2, 16 * 8 * 8)
    # The x path's encoder-only pass gives the same h as the full pass, on the conditional rows.
    context = sd3.family.condition(PROMPTS, "", 2.0)
    x = sd3.initial_noise([0, 1])
    with torch.no_grad():
        encoded = sd3.encode_h(x, 1000, context)
        with hook.recording() as recorded:
            sd3.unet_output(x, 1000, context, 2.0)
    torch.testing.assert_close(encoded.flatten(1), recorded[-1][-2:].flatten(1), atol=1e-5, rtol=0)
    # Another block, by module path.
    other = ModelAdapter.from_directory(sd3_dir, hspace="transformer_blocks.0")
    first = other.generate([0, 1], prompts=PROMPTS, steps=2, guidance_scale=2.0, record_h=True)
    assert other.info["hspace"] == "transformer_blocks.0" and not torch.allclose(first.h[0], out.h[0])
    torch.testing.assert_close(first.images, out.images, atol=0, rtol=0)  # recording changes nothing
    coarse = ModelAdapter.from_directory(sd3_dir, hspace_pool=2)
    assert coarse.generate([0, 1], prompts=PROMPTS, steps=2, guidance_scale=2.0, record_h=True).h[0].shape == (2, 64)
    with pytest.raises(ValueError, match="no module 'blocks.9'"):
        ModelAdapter.from_directory(sd3_dir, hspace="blocks.9").hspace()


def test_sd3_distribution_guidance_moves_a_probes_reading(sd3):
    assert_distribution_guidance_moves_the_reading(sd3, guidance_scale=2.0)


def test_sd3_universal_guidance_back_propagates_through_transformer_and_vae(sd3):
    from audit.methods.universal_guidance import UniversalGuidance
    from audit.zoo.labelers import SynthFacesLabeler

    seeds, prompts = [0, 1, 2, 3], PROMPTS * 2
    method = UniversalGuidance(SynthFacesLabeler("synthfaces-eval"), ["skin_tone"], [0.5, 0.5], scale=1.0)
    guided = sd3.generate(seeds, prompts=prompts, steps=2, guidance_scale=2.0, method=method)
    plain = sd3.generate(seeds, prompts=prompts, steps=2, guidance_scale=2.0)
    assert torch.isfinite(guided.images).all() and "skipped_nonfinite" not in guided.stats
    assert (guided.images - plain.images).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["prompt_projection", "semantic_guidance"])
def test_methods_that_edit_a_unets_text_context_do_not_apply_and_say_why(sd3, name, monkeypatch):
    """SD3 conditions through three encoders' outputs at once: the family says so, without
    running an encoder to find out."""
    from audit.methods.prompt_projection import PromptProjection
    from audit.methods.semantic_guidance import SemanticGuidance

    monkeypatch.setattr(sd3, "encode_prompts", lambda prompts: pytest.fail("encoded a prompt"))
    method = {"prompt_projection": PromptProjection(["a", "b"]),
              "semantic_guidance": SemanticGuidance(["a", "b"], [0.5, 0.5])}[name]
    reason = method.not_applicable(sd3)
    assert reason and "edits a UNet's text context" in reason and "sd3 models condition otherwise" in reason
