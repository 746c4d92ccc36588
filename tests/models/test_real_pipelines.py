"""Real-model loading on tiny random pipelines of each family, offline: the adapter reproduces
diffusers' own pipelines, the full suite path runs, and missing weights give one clear line."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from audit.models.adapter import ModelAdapter
from audit.models.loading import ModelNotAvailable, load_model
from audit.run.suite import run_suite
from audit.spec import ModelSpec, load_suite

PROMPTS = ["a photo of a person", "a photo of a man"]


def reference_images(pipe, adapter, seeds, **kwargs):
    """The diffusers pipeline's images from the adapter's per-seed noise, with the same sampler."""
    pipe.scheduler = type(adapter.scheduler).from_config(adapter.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(latents=adapter.initial_noise(seeds), output_type="pt", **kwargs).images


def test_sd_adapter_matches_the_stable_diffusion_pipeline(sd_dir):
    from diffusers import StableDiffusionPipeline

    adapter = ModelAdapter.from_directory(sd_dir)
    assert adapter.conditional and adapter.vae is not None and adapter.info["pipeline"] == "StableDiffusionPipeline"
    ours = adapter.generate([3, 4], prompts=PROMPTS, steps=3, guidance_scale=2.0).images
    assert ours.shape == (2, 3, 16, 16)  # 8x8 latents through a VAE with scale factor 2
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, safety_checker=None, requires_safety_checker=False)
    expected = reference_images(pipe, adapter, [3, 4], prompt=PROMPTS, num_inference_steps=3, guidance_scale=2.0)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("negative", ["", "a photo of a woman"])
def test_sdxl_adapter_matches_the_sdxl_pipeline(sdxl_dir, negative):
    from diffusers import StableDiffusionXLPipeline

    adapter = ModelAdapter.from_directory(sdxl_dir)
    assert adapter.text_encoder_2 is not None and adapter.zero_empty_negative
    ours = adapter.generate([3, 4], prompts=PROMPTS, steps=3, guidance_scale=2.0, negative_prompt=negative).images
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    expected = reference_images(pipe, adapter, [3, 4], prompt=PROMPTS, num_inference_steps=3, guidance_scale=2.0,
                                negative_prompt=negative or None)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_sdxl_h_space_is_the_mid_block_and_encoder_passes_get_the_added_conditions(sdxl_dir):
    adapter = ModelAdapter.from_directory(sdxl_dir)
    out = adapter.generate([0, 1], prompts=PROMPTS, steps=2, guidance_scale=2.0, record_h=True)
    assert len(out.h) == 2 and out.h[0].shape == (2, 16 * 4 * 4)
    # An encoder-only pass with just the conditional context (as x-path guidance makes) needs the
    # pooled embeddings and size conditions too; the pre-hook supplies the conditional rows.
    context = adapter.encode_prompts(PROMPTS)
    h = adapter.hspace().encode(adapter.initial_noise([0, 1]), 500, encoder_hidden_states=context)
    assert h.shape == (2, 16, 4, 4)


def test_unconditional_pipeline_loads_with_ddim_or_any_named_scheduler(ddpm_dir):
    from diffusers import DDIMPipeline

    adapter = load_model(ModelSpec(name="ddpm", source=str(ddpm_dir), steps=3))
    assert type(adapter.scheduler).__name__ == "DDIMScheduler" and not adapter.conditional
    ours = adapter.generate([7, 8], steps=3).images
    pipe = DDIMPipeline.from_pretrained(ddpm_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=[torch.Generator().manual_seed(s) for s in (7, 8)], eta=0.0,
                    num_inference_steps=3, output_type="np").images
    torch.testing.assert_close(ours, torch.from_numpy(expected).permute(0, 3, 1, 2), atol=1e-5, rtol=0)

    # A stochastic sampler draws each image's step noise from that image's seed: batch-independent.
    ddpm = load_model(ModelSpec(name="ddpm", source=str(ddpm_dir), scheduler="DDPMScheduler"))
    both = ddpm.generate([7, 8], steps=3).images
    torch.testing.assert_close(ddpm.generate([8], steps=3).images[0], both[1], atol=1e-5, rtol=0)
    assert not torch.allclose(both, ours)


def test_schedulers_without_a_generator_argument_run(sd_dir):
    adapter = load_model(ModelSpec(name="sd", source=str(sd_dir), scheduler="PNDMScheduler"))
    images = adapter.generate([0], prompts=PROMPTS[:1], steps=3, guidance_scale=2.0).images
    assert torch.isfinite(images).all()


def test_half_precision_and_memory_options(sd_dir):
    reference = load_model(ModelSpec(name="sd", source=str(sd_dir))).generate([0, 1], prompts=PROMPTS, steps=2,
                                                                             guidance_scale=2.0).images
    sliced = load_model(ModelSpec(name="sd", source=str(sd_dir), memory=["attention_slicing", "vae_slicing"]))
    assert sliced.info["memory"] == ["attention_slicing", "vae_slicing"]
    torch.testing.assert_close(sliced.generate([0, 1], prompts=PROMPTS, steps=2, guidance_scale=2.0).images,
                               reference, atol=1e-4, rtol=0)
    bf16 = load_model(ModelSpec(name="sd", source=str(sd_dir), dtype="bfloat16"))
    assert bf16.unet.dtype == bf16.text_encoder.dtype == bf16.vae.dtype == torch.bfloat16
    images = bf16.generate([0, 1], prompts=PROMPTS, steps=2, guidance_scale=2.0).images
    assert images.dtype == torch.float32 and (images - reference).abs().mean() < 0.05
    fp16 = load_model(ModelSpec(name="sd", source=str(sd_dir), dtype="float16"))
    assert fp16.unet.dtype == torch.float16 and fp16.vae.dtype == torch.float32  # force_upcast, like diffusers


def test_the_hf_cache_resolves_offline_and_records_the_commit(sd_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny--sd"
    shutil.copytree(sd_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for revision in (None, "main", commit):
        adapter = load_model(ModelSpec(name="sd", source="hf:tiny/sd", revision=revision))
        assert adapter.model_id == "tiny/sd" and adapter.revision == commit and adapter.conditional
    with pytest.raises(ModelNotAvailable, match=r"tiny/sd at revision v2 is not in the Hugging Face cache"):
        load_model(ModelSpec(name="sd", source="hf:tiny/sd", revision="v2"))


def test_missing_weights_give_one_line(sd_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelNotAvailable) as error:
        load_model(ModelSpec(name="sd", source=str(broken)))
    assert "incomplete model" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ModelNotAvailable, match="hf download nobody/missing"):
        load_model(ModelSpec(name="x", source="hf:nobody/missing"))

    from audit.cli import app

    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "broken", "models": [{"name": "sd", "source": str(broken)}],
                                     "methods": [{"name": "none"}], "settings": [{"attributes": ["smile"]}],
                                     "samples": 2, "labelers": ["synthfaces-eval"], "metrics": ["fairness"]}))
    result = CliRunner().invoke(app, ["run", str(suite), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "incomplete model" in lines[0]


def family_suite(tmp_path, model: dict, methods: list[dict]):
    data = {"name": "family", "models": [model], "methods": methods,
            "settings": [{"attributes": ["skin_tone"], "target": "uniform"}], "samples": 6, "batch_size": 3,
            "labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo",
            "probe": {"n": 16, "batch_size": 8}, "metrics": ["fairness"]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_suite(path)


METHODS = [{"name": "none"}, {"name": "prompt"}, {"name": "distribution_guidance", "params": {"scale": 1.0}},
           {"name": "distribution_guidance", "label": "dg-x", "params": {"scale": 1.0, "path": "x"}}]


@pytest.mark.parametrize("family", ["sd", "sdxl", "ddpm"])
def test_the_full_suite_path_runs_on_each_family(family, request, tmp_path):
    directory = request.getfixturevalue(f"{family}_dir")
    model = {"name": family, "source": str(directory), "steps": 2}
    if family != "ddpm":
        model.update(guidance_scale=2.0, prompts=["a photo of a person"])
    frame = run_suite(family_suite(tmp_path, model, METHODS), tmp_path / "out")
    status = dict(zip(frame["method"], frame["status"], strict=True))
    expected_prompt = "not_applicable" if family == "ddpm" else "done"
    assert status == {"none": "done", "prompt": expected_prompt, "distribution_guidance": "done", "dg-x": "done"}
    done = frame[frame["status"] == "done"]
    assert (done["n_valid"] == 6).all() and done["fd"].notna().all()
    images = {}
    for row in done.itertuples():
        cell = tmp_path / "out" / "cells" / row.cell_id
        pngs = sorted((cell / "images").glob("*.png"))
        assert len(pngs) == 6
        images[row.method] = [p.read_bytes() for p in pngs]
        manifest = json.loads((cell / "manifest.json").read_text())
        assert manifest["model"]["info"]["unet"] == ("UNet2DModel" if family == "ddpm" else "UNet2DConditionModel")
        assert manifest["scheduler"]["class"] == "DDIMScheduler"
        samples = pd.read_parquet(cell / "samples.parquet")
        assert samples["seed"].tolist() == list(range(6))
    # Guidance and prompt debiasing change the images; unguided sampling is the shared baseline.
    assert images["distribution_guidance"] != images["none"] and images["dg-x"] != images["none"]
    if family != "ddpm":
        assert images["prompt"] != images["none"]
    from PIL import Image

    with Image.open(next((tmp_path / "out" / "cells").rglob("*.png"))) as first:
        assert first.size == ((32, 32) if family == "ddpm" else (16, 16))


def test_loading_options_and_the_cell_id(tmp_path, ddpm_dir):
    from audit.spec import Cell, MethodSpec, SettingSpec

    def cell_id(**model):
        spec = ModelSpec(name="m", source=str(ddpm_dir), **model)
        return Cell(model=spec, method=MethodSpec(name="none"), setting=SettingSpec(attributes=["smile"]),
                    prompt=None, samples=2, batch_size=2, seed=0).cell_id

    # Memory savers do not change what is sampled; a different sampler or weight variant does.
    assert cell_id() == cell_id(memory=["attention_slicing"])
    assert cell_id() != cell_id(scheduler="DDPMScheduler") and cell_id() != cell_id(variant="fp16")


def test_unknown_scheduler_and_unregistered_custom_model_are_suite_errors(tmp_path):
    from audit.spec import SuiteError

    for model, message in (({"scheduler": "FastScheduler"}, "unknown scheduler 'FastScheduler'"),
                           ({"source": "custom:nope"}, "no custom model 'nope' is registered")):
        path = tmp_path / "suite.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "models": [{"name": "m", "source": "zoo:synthfaces-ddpm",
                                                                 **model}],
                                        "methods": [{"name": "none"}], "settings": [{"attributes": ["smile"]}]}))
        with pytest.raises(SuiteError, match=message):
            load_suite(path)


def test_a_registered_model_factory_serves_custom_sources(tmp_path, tiny_unet, tiny_ddim):
    from audit.registry import MODELS, register_model

    register_model("tiny-custom", lambda device, dtype: ModelAdapter(unet=tiny_unet, scheduler=tiny_ddim,
                                                                     model_id="tiny-custom", device=device,
                                                                     dtype=dtype))
    try:
        frame = run_suite(family_suite(tmp_path, {"name": "custom", "source": "custom:tiny-custom", "steps": 2},
                                       [{"name": "none"}]), tmp_path / "out")
    finally:
        MODELS.pop("tiny-custom")
    assert frame["status"].tolist() == ["done"] and frame["n_valid"].tolist() == [6]
    manifest = json.loads((tmp_path / "out" / "cells" / frame["cell_id"][0] / "manifest.json").read_text())
    assert manifest["model"]["id"] == "tiny-custom"
