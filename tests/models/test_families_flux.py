"""Flux.1 on a tiny random pipeline: diffusers parity, per-seed images, no classifier-free guidance
(guidance_scale is the distilled guidance embedding), h at the middle of the double- and
single-stream stacks, distribution guidance."""

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
def flux(flux_dir):
    return ModelAdapter.from_directory(flux_dir)


def test_flux_adapter_matches_the_flux_pipeline(flux):
    assert flux.info["family"] == "flux" and type(flux.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert flux.initial_noise([0]).shape == (1, 16 * 16, 16)  # 4 latent channels x 2x2 patches per token
    ours = flux.generate([3, 4], prompts=PROMPTS, steps=3, guidance_scale=3.5).images
    assert ours.shape == (2, 3, 64, 64)
    expected = pipeline_images(flux, [3, 4], prompt=PROMPTS, num_inference_steps=3, guidance_scale=3.5,
                               height=64, width=64)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_flux_guidance_is_an_embedding_not_a_doubled_batch(flux):
    context = flux.family.condition(PROMPTS, "a photo of a woman", 3.5)
    assert len(context) == 2 and context.rows["guidance"].tolist() == [3.5, 3.5]
    low = flux.generate([3, 4], prompts=PROMPTS, steps=2, guidance_scale=1.0).images
    high = flux.generate([3, 4], prompts=PROMPTS, steps=2, guidance_scale=3.5).images
    assert (low - high).abs().max() > 1e-4


def test_flux_images_do_not_depend_on_the_batch(flux):
    assert_batch_invariant(flux, guidance_scale=3.5)


def test_flux_h_is_the_middle_block_across_both_stacks(flux, flux_dir):
    # one double-stream and two single-stream blocks: the middle one (index 1 of 3) is single block 0
    assert flux.hspace().module == "single_transformer_blocks.0" and flux.hspace().grid == (16, 16)
    out = flux.generate([0, 1], prompts=PROMPTS, steps=2, guidance_scale=3.5, record_h=True)
    assert out.h[0].shape == (2, 16 * 8 * 8)
    double = ModelAdapter.from_directory(flux_dir, hspace="transformer_blocks.0")
    assert double.generate([0, 1], prompts=PROMPTS, steps=2, guidance_scale=3.5, record_h=True).h[0].shape == (2, 1024)


def test_flux_distribution_guidance_moves_a_probes_reading(flux):
    assert_distribution_guidance_moves_the_reading(flux, guidance_scale=3.5)
