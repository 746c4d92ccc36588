"""PixArt-Sigma on a tiny random pipeline: diffusers parity (DPM-Solver++, learned variance
dropped, no resolution binning), per-seed images, h at the middle block's tokens, distribution
guidance."""

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
def pixart(pixart_dir):
    return ModelAdapter.from_directory(pixart_dir)


def test_pixart_adapter_matches_the_pixart_sigma_pipeline(pixart):
    assert pixart.info["family"] == "pixart" and type(pixart.scheduler).__name__ == "DPMSolverMultistepScheduler"
    ours = pixart.generate([3, 4], prompts=PROMPTS, steps=3, guidance_scale=2.0).images
    assert ours.shape == (2, 3, 32, 32)
    expected = pipeline_images(pixart, [3, 4], prompt=PROMPTS, num_inference_steps=3, guidance_scale=2.0,
                               use_resolution_binning=False, clean_caption=False)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_pixart_images_do_not_depend_on_the_batch(pixart):
    assert_batch_invariant(pixart, guidance_scale=2.0)


def test_pixart_h_is_the_middle_blocks_tokens(pixart):
    assert pixart.hspace().module == "transformer_blocks.1" and pixart.hspace().grid == (16, 16)
    out = pixart.generate([0, 1], prompts=PROMPTS, steps=2, guidance_scale=2.0, record_h=True)
    assert out.h[0].shape == (2, 16 * 8 * 8)


def test_pixart_distribution_guidance_moves_a_probes_reading(pixart):
    assert_distribution_guidance_moves_the_reading(pixart, guidance_scale=2.0)


def test_another_pipeline_on_the_same_transformer_is_refused_in_one_line(pixart_dir, tmp_path):
    import json
    import shutil

    from audit.models.loading import load_model
    from audit.spec import ModelSpec, SuiteError

    alpha = tmp_path / "alpha"
    shutil.copytree(pixart_dir, alpha)
    index = json.loads((alpha / "model_index.json").read_text())
    (alpha / "model_index.json").write_text(json.dumps({**index, "_class_name": "PixArtAlphaPipeline"}))
    with pytest.raises(SuiteError, match="PixArtAlphaPipeline is not a supported pipeline; supported: .*PixArtSigma"):
        load_model(ModelSpec(name="alpha", source=str(alpha)))
