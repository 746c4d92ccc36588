"""Model weights load from .safetensors only: a pickled .bin can run code hidden in it when
loaded, so a suite must opt in per model (allow_pickle: true), and the manifest records it."""

import json
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.models.adapter import ModelAdapter
from audit.models.loading import PickledWeights, load_model
from audit.spec import ModelSpec, load_suite, plan


@pytest.fixture(scope="module")
def pickled_dir(tiny_unet, tiny_ddim, tmp_path_factory):
    """The tiny unconditional pipeline saved the old way: unet/diffusion_pytorch_model.bin."""
    from diffusers import DDIMPipeline

    path = tmp_path_factory.mktemp("pickled-ddpm")
    DDIMPipeline(unet=tiny_unet, scheduler=tiny_ddim).save_pretrained(path, safe_serialization=False)
    assert not list(path.rglob("*.safetensors"))
    return path


def suite_file(tmp_path, source, **model):
    data = {"name": "pickles", "models": [{"name": "old", "source": str(source), "steps": 2, **model}],
            "methods": [{"name": "none"}], "settings": [{"attributes": ["skin_tone"]}],
            "samples": 2, "batch_size": 2, "labelers": ["synthfaces-eval"], "metrics": ["fairness"]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_pickled_weights_are_refused_in_one_line_naming_the_model_the_file_and_the_opt_in(tmp_path, pickled_dir):
    result = CliRunner().invoke(app, ["run", str(suite_file(tmp_path, pickled_dir)), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    weights = pickled_dir / "unet" / "diffusion_pytorch_model.bin"
    assert lines[0].startswith(f"error: model old: {weights} holds pickled weights")
    assert lines[0].endswith("set allow_pickle: true on model old in the suite")
    assert not (tmp_path / "out").exists()  # refused before the run started
    dry = CliRunner().invoke(app, ["run", str(suite_file(tmp_path, pickled_dir)), "--dry-run"], terminal_width=400)
    assert dry.exit_code == 2 and "weights found at" in dry.output and "but refused: model old:" in dry.output
    assert dry.stderr.strip() == "error: not ready to run: the weights of old are missing or refused (see the model " \
        "lines above for what to download)"


def test_loading_refuses_pickles_even_past_the_check(pickled_dir):
    with pytest.raises(PickledWeights, match="allow_pickle: true"):
        load_model(ModelSpec(name="old", source=str(pickled_dir)))
    with pytest.raises(OSError, match="safetensors"):  # diffusers itself is told: safetensors only
        ModelAdapter.from_directory(pickled_dir)


def test_a_pickled_text_encoder_is_refused_too(tmp_path, sd_dir):
    from safetensors.torch import load_file

    copy = tmp_path / "sd"
    shutil.copytree(sd_dir, copy)
    weights = copy / "text_encoder" / "model.safetensors"
    torch.save(load_file(weights), copy / "text_encoder" / "pytorch_model.bin")  # transformers 5 saves no pickles
    weights.unlink()
    with pytest.raises(PickledWeights, match=r"text_encoder/pytorch_model\.bin holds pickled weights"):
        load_model(ModelSpec(name="sd", source=str(copy)))
    with pytest.raises(OSError):  # transformers is told safetensors only as well
        ModelAdapter.from_directory(copy)
    assert load_model(ModelSpec(name="sd", source=str(copy), allow_pickle=True)).conditional


def test_allow_pickle_loads_them_records_it_and_keeps_the_cell_id(tmp_path, pickled_dir):
    suite = suite_file(tmp_path, pickled_dir, allow_pickle=True)
    result = CliRunner().invoke(app, ["run", str(suite), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    manifest = json.loads(next((tmp_path / "out" / "cells").glob("*/manifest.json")).read_text())
    assert manifest["model"]["allow_pickle"] is True
    opted_in = plan(load_suite(suite))[0].cell_id
    assert opted_in == plan(load_suite(suite_file(tmp_path, pickled_dir)))[0].cell_id
    # records keyed on a model's dump (calibration records, suite.json) are as before unless it opts in
    assert "allow_pickle" not in ModelSpec(name="m", source="zoo:synthfaces-ddpm").model_dump()
