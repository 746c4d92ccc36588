"""Each transformer family end to end through `diffaudit run` on its tiny offline pipeline: no
guidance, prompt debiasing, sample and distribution guidance (probes trained on the pooled h),
results and report; and a missing released model names what to download."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app

METHODS = [{"name": "none"}, {"name": "prompt"}, {"name": "sample_guidance", "params": {"scale": 1.0}},
           {"name": "distribution_guidance", "params": {"scale": 1.0}}]


@pytest.mark.parametrize("family", ["sd3", "flux", "pixart"])
def test_a_transformer_family_runs_every_method_and_the_report(family, request, tmp_path):
    directory = request.getfixturevalue(f"{family}_dir")
    model = {"name": family, "source": str(directory), "steps": 2, "guidance_scale": 2.0,
             "prompts": ["a photo of a person"]}
    suite = {"name": "family", "models": [model], "methods": METHODS,
             "settings": [{"attributes": ["skin_tone"], "target": "uniform"}], "samples": 4, "batch_size": 2,
             "labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo",
             "probe": {"n": 16, "batch_size": 8}, "metrics": ["fairness"]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    assert dict(zip(frame["method"], frame["status"], strict=True)) == {m["name"]: "done" for m in METHODS}
    assert (frame["n_valid"] == 4).all() and frame["fd"].notna().all()
    images = {}
    for row in frame.itertuples():
        cell = tmp_path / "out" / "cells" / row.cell_id
        images[row.method] = [p.read_bytes() for p in sorted((cell / "images").glob("*.png"))]
        manifest = json.loads((cell / "manifest.json").read_text())
        assert manifest["model"]["info"]["family"] == family
    assert len({tuple(v) for v in images.values()}) == len(METHODS)  # every method changed the images
    assert (tmp_path / "out" / "report" / "index.html").is_file()


def test_a_missing_released_model_names_its_download(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from audit.models.loading import ModelNotAvailable, resolve_weights

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for repo, words in (("stabilityai/stable-diffusion-3.5-medium", "hf auth login"),
                        ("black-forest-labs/FLUX.1-schnell", "Apache-2.0"),
                        ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "T5-XXL")):
        with pytest.raises(ModelNotAvailable) as error:
            resolve_weights(f"hf:{repo}")
        message = str(error.value)
        assert f"`hf download {repo}`" in message and words in message and "\n" not in message
