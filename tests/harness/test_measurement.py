"""No edit or fault gives a silently wrong number: diverged samples, caches keyed on what they
depend on, weights retrained in place, cells without a valid sample, FID references too small."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from audit.cli import app
from audit.run.suite import run_suite
from audit.spec import SuiteError, load_suite


def write_suite(tmp_path, model_dir, name="suite.yaml", **changes):
    data = {
        "name": "measure",
        "models": [{"name": "tiny", "source": str(model_dir), "steps": 3}],
        "methods": [{"name": "none"}],
        "settings": [{"attributes": ["skin_tone"], "target": [0.2, 0.8]}],
        "samples": 8, "batch_size": 4, "seed": 3,
        "labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo",
        "probe": {"n": 16, "batch_size": 8}, "metrics": ["fairness"],
    }
    data.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def suite_of(tmp_path, model_dir, **changes):
    return load_suite(write_suite(tmp_path, model_dir, **changes))


def events(out):
    log = out / "events.log"
    return log.read_text().splitlines() if log.exists() else []


def only_cell(out):
    (cell,) = [p for p in (out / "cells").iterdir()]
    return cell


# -- diverged samples ------------------------------------------------------------------------------

def test_five_steps_at_eta_1_on_the_zoo_ddpm_give_finite_images_and_other_step_counts_are_untouched(monkeypatch):
    """Root cause: diffusers' DDIM step takes sqrt(1 - alpha_bar_prev - sigma^2); at t=999 of the
    zoo's cosine schedule with trailing spacing alpha_bar is 2.4e-9 and float32 rounds the 5-step
    schedule's first argument (999 -> 799) to -6e-8: NaN everywhere."""
    from diffusers import DDIMScheduler

    import audit.models.adapter as adapter_module
    from audit.zoo import load_adapter
    from audit.zoo.recipes import SCHEDULER

    scheduler = DDIMScheduler(**SCHEDULER)
    scheduler.set_timesteps(5)
    variance = scheduler._get_variance(999, 799)
    assert 1 - scheduler.alphas_cumprod[799] - (variance ** 0.5) ** 2 < 0  # the rounding, in diffusers itself

    adapter = load_adapter("synthfaces-ddpm")
    out = adapter.generate([0, 1, 2, 3], steps=5, eta=1.0)
    spread = out.images.flatten(1)
    assert torch.isfinite(out.images).all() and (spread.amax(1) - spread.amin(1) > 0.5).all()  # faces
    assert out.finite.all() and "nonfinite_seeds" not in out.stats
    # Where diffusers' step was finite, the guard changes nothing, bit for bit.
    guarded = {steps: adapter.generate([0, 1], steps=steps, eta=1.0).images for steps in (4, 6)}
    monkeypatch.setattr(adapter_module, "_keep_ddim_direction_real", lambda scheduler, eta: None)
    for steps, images in guarded.items():
        assert torch.equal(adapter.generate([0, 1], steps=steps, eta=1.0).images, images)


@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory, tiny_unet, tiny_ddim):
    """The tiny model with a NaN in its output convolution: every sample comes out NaN."""
    import copy

    from diffusers import DDIMPipeline

    unet = copy.deepcopy(tiny_unet)
    with torch.no_grad():
        unet.conv_out.bias[0] = float("nan")
    path = tmp_path_factory.mktemp("nan-model")
    DDIMPipeline(unet=unet, scheduler=tiny_ddim).save_pretrained(path)
    return path


def test_a_model_whose_every_sample_is_nan_fails_in_one_line_naming_model_steps_and_eta(tmp_path, nan_model_dir):
    path = write_suite(tmp_path, nan_model_dir, models=[{"name": "tiny", "source": str(nan_model_dir), "steps": 3,
                                                         "eta": 1.0}])
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output[-2000:]
    assert lines[-1].startswith("error: ") and "non-finite" in lines[-1]
    assert str(nan_model_dir) in lines[-1] and "steps 3" in lines[-1] and "eta 1" in lines[-1]
    assert not (tmp_path / "out" / "results.csv").exists() or pd.read_csv(tmp_path / "out" / "results.csv")[
        "fd"].isna().all()


def test_a_cell_of_single_image_batches_that_all_diverged_fails_too(tmp_path, nan_model_dir):
    suite = suite_of(tmp_path, nan_model_dir, batch_size=1, samples=3)
    with pytest.raises(SuiteError, match=r"model tiny: all 3 images of cell .* came out non-finite .* steps 3, eta 0"):
        run_suite(suite, tmp_path / "out")


def test_isolated_nonfinite_and_blank_images_are_invalid_with_their_reason(tmp_path, tiny_model_dir, monkeypatch):
    """Unguided sampling where one sample (seed 5) blows up: that image is invalid, 'non-finite
    pixels', the others count; an image of one flat colour is invalid as 'blank image'; the report
    says so."""
    from audit.methods.base import NoGuidance
    from audit.report.html import write_report

    def blows_up_seed_5(self, output, x, batch):
        if batch.step_index == 1 and 5 in batch.seeds:
            output = output.clone()
            output[batch.seeds.index(5)] = float("nan")
        return output

    suite = suite_of(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(NoGuidance, "on_output", blows_up_seed_5)
        frame = run_suite(suite, out)
    cell = only_cell(out)
    markers = [json.loads(p.read_text()) for p in sorted((cell / "batches").glob("*.json"))]
    assert [m["stats"].get("nonfinite_seeds") for m in markers] == [[5], None]
    image = np.asarray(Image.open(cell / "images" / "00000005.png"))
    assert image.max() == 0  # stored black, not a NaN cast to uint8
    labels = pd.read_parquet(cell / "labels-synthfaces-eval.parquet").set_index("seed")
    assert not labels.loc[5, "valid"] and labels.loc[5, "reason"] == "non-finite pixels"
    assert labels.drop(index=5)["valid"].all()
    assert frame["n_valid"].tolist() == [7] and frame["invalid_reasons"].tolist() == ["non-finite pixels: 1"]

    # An image of one flat colour (whatever produced it) is no sample of any class either.
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(cell / "images" / "00000008.png")
    (cell / "labels-synthfaces-eval.parquet").unlink()
    frame = run_suite(suite, out, measure_only=True)
    labels = pd.read_parquet(cell / "labels-synthfaces-eval.parquet").set_index("seed")
    assert labels.loc[8, "reason"] == "blank image" and labels.loc[5, "reason"] == "non-finite pixels"
    assert frame["n_valid"].tolist() == [6]
    assert frame["invalid_reasons"].tolist() == ["blank image: 1; non-finite pixels: 1"]
    index = write_report(out)
    cell_page = next((index.parent / "cells").glob("*.html")).read_text()
    assert "non-finite pixels: 1" in cell_page and "blank image: 1" in cell_page


# -- caches keyed on what they depend on -----------------------------------------------------------

@pytest.fixture
def counted_labels(monkeypatch):
    """How many images each zoo CNN labeler labels (by name)."""
    from audit.zoo.labelers import SynthFacesLabeler

    counts = {}
    real = SynthFacesLabeler.label

    def label(self, images):
        counts[self.name] = counts.get(self.name, 0) + len(images)
        return real(self, images)

    monkeypatch.setattr(SynthFacesLabeler, "label", label)
    return counts


def test_a_changed_tolerance_remeasures_from_the_cached_labels(tmp_path, tiny_model_dir, counted_labels):
    out = tmp_path / "out"
    run_suite(suite_of(tmp_path, tiny_model_dir), out)
    assert counted_labels == {"synthfaces-eval": 8}
    cell = only_cell(out)
    first = json.loads((cell / "metrics.json").read_text())["labelers"]["synthfaces-eval"]
    assert first["tolerance"] == 0.05
    frame = run_suite(suite_of(tmp_path, tiny_model_dir, tolerance=0.5), out)
    again = json.loads((cell / "metrics.json").read_text())["labelers"]["synthfaces-eval"]
    assert again["tolerance"] == 0.5 and again["counts"] == first["counts"]
    assert frame["tost_p"].iloc[0] != first["tost_p"]  # the table shows the new test, not the cached one
    assert counted_labels == {"synthfaces-eval": 8}  # not labelled again
    run_suite(suite_of(tmp_path, tiny_model_dir, tolerance=0.5), out)
    assert counted_labels == {"synthfaces-eval": 8}


def test_labeler_options_and_weights_are_part_of_the_label_key(tmp_path, tiny_model_dir):
    """clip_zeroshot labels by its class phrases and its weights: swapping the phrases, or
    retraining the CLIP in place, must relabel, not reuse the labels of the old configuration."""
    from safetensors.torch import load_file, save_file

    from audit.zoo import zoo_path

    clip_dir = tmp_path / "clip"
    shutil.copytree(zoo_path("synthfaces-clip"), clip_dir)
    phrases = {"light": "a person with light skin", "dark": "a person with dark skin"}

    def run(classes):
        options = {"clip_zeroshot": {"model_path": str(clip_dir), "classes": {"skin_tone": classes}}}
        run_suite(suite_of(tmp_path, tiny_model_dir, labelers=["clip_zeroshot"], labeler_options=options), out)
        labels = pd.read_parquet(only_cell(out) / "labels-clip_zeroshot.parquet")
        metrics = json.loads((only_cell(out) / "metrics.json").read_text())["labelers"]["clip_zeroshot"]
        return labels["p:skin_tone:dark"].to_numpy(), metrics["counts"]

    out = tmp_path / "out"
    dark, counts = run(phrases)
    swapped_dark, swapped_counts = run({"light": phrases["dark"], "dark": phrases["light"]})
    np.testing.assert_allclose(swapped_dark, 1 - dark, atol=1e-5)
    assert swapped_counts == counts[::-1]
    # The same phrases again: the labels of the first configuration are gone, so relabelled, equal.
    np.testing.assert_allclose(run(phrases)[0], dark, atol=1e-6)
    # Weights retrained in place (same path, same options): labelled again.
    weights = next(clip_dir.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if "visual_projection" in k and v.dtype.is_floating_point)
    tensors[name] = tensors[name] * -1
    save_file(tensors, weights)
    retrained, _ = run(phrases)
    assert not np.allclose(retrained, dark, atol=1e-3)


def test_adding_a_metric_measures_it_for_finished_cells(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    run_suite(suite_of(tmp_path, tiny_model_dir), out)
    cell = only_cell(out)
    assert "clip_score" not in json.loads((cell / "metrics.json").read_text())
    before = events(out)
    run_suite(suite_of(tmp_path, tiny_model_dir, metrics=["fairness", "clip"]), out)
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["clip_score"]["reason"] == "unconditional model: no prompt to align with"
    assert events(out) == before


@pytest.mark.parametrize("damage", [b'{"status": "done", "labelers": {"synthfaces-ev', b"", b"[]",
                                    b'{"status": "done", "labelers": {"synthfaces-eval": {}}}'])
def test_a_torn_or_hand_edited_metrics_file_is_not_a_finished_cell(tmp_path, tiny_model_dir, damage):
    out = tmp_path / "out"
    suite = suite_of(tmp_path, tiny_model_dir)
    reference = run_suite(suite, out)
    cell = only_cell(out)
    (cell / "metrics.json").write_bytes(damage)
    before = events(out)
    again = run_suite(suite, out)
    assert events(out) == before  # nothing regenerated: only measured again
    pd.testing.assert_frame_equal(again.drop(columns=["seconds", "images_per_s"]),
                                  reference.drop(columns=["seconds", "images_per_s"]))
    assert json.loads((cell / "metrics.json").read_text())["labelers"]


# -- local models retrained in place ---------------------------------------------------------------

def perturb_unet(model_dir):
    from safetensors.torch import load_file, save_file

    weights = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["conv_out.bias"] = tensors["conv_out.bias"] + 0.5
    save_file(tensors, weights)


def test_a_local_model_retrained_in_place_gets_new_probes_and_images(tmp_path, tiny_model_dir):
    from audit.sources import local_revision

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    suite = suite_of(tmp_path, model_dir, methods=[{"name": "none"},
                                                   {"name": "distribution_guidance", "params": {"scale": 1.0}}])
    out = tmp_path / "out"
    first = run_suite(suite, out)
    revision = local_revision(model_dir)
    assert revision.startswith("content-")
    manifests = [json.loads((c / "manifest.json").read_text()) for c in (out / "cells").iterdir()]
    assert {m["model"]["revision"] for m in manifests} == {revision}
    (probe,) = (out / "probes").rglob("probe.json")
    assert revision in str(probe)
    images = {p.name: p.read_bytes() for p in (out / "cells").rglob("*.png")}

    perturb_unet(model_dir)
    assert local_revision(model_dir) != revision
    generated = len([e for e in events(out) if " generated " in e])
    second = run_suite(suite, out)
    assert len([e for e in events(out) if " generated " in e]) == 2 * generated
    assert len([e for e in events(out) if " superseded " in e]) == 2
    assert len(list((out / "superseded").iterdir())) == 2  # the old cells, kept aside
    assert len(list((out / "probes").rglob("probe.json"))) == 2  # a probe for the new weights
    assert {p.name: p.read_bytes() for p in (out / "cells").rglob("*.png")} != images
    assert second["fd"].tolist() != first["fd"].tolist() or second["cell_id"].tolist() == first["cell_id"].tolist()
    # Unchanged weights: everything reused.
    before = events(out)
    run_suite(suite, out)
    assert events(out) == before


def test_weight_hashes_are_read_in_chunks_and_cached_by_file_identity(tmp_path, monkeypatch):
    import hashlib

    import audit.sources as sources

    monkeypatch.setenv("DIFFAUDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "CACHED_FROM_BYTES", 1024)
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(4096))
    assert sources.file_digest(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    (entry,) = (tmp_path / "cache" / "hashes").iterdir()
    sources._DIGESTS.clear()
    entry.write_text("f" * 64)  # a later run trusts the cached hash while the file is unchanged
    assert sources.file_digest(big) == "f" * 64
    big.write_bytes(os.urandom(4096))  # rewritten in place, same size: hashed again
    assert sources.file_digest(big) == hashlib.sha256(big.read_bytes()).hexdigest()


# -- a cell with no valid sample -------------------------------------------------------------------

def test_a_cell_whose_every_image_is_invalid_finishes_and_says_why(tmp_path, tiny_model_dir):
    """A labeler that finds no face in any image: the run used to crash formatting FD None in the
    summary (exit 1, no report)."""
    from audit.labelers.base import LabelResult
    from audit.registry import LABELERS, register_labeler
    from audit.zoo.labelers import SynthFacesLabeler

    class FindsNoFace(SynthFacesLabeler):
        def __init__(self, **options):
            super().__init__("synthfaces-eval", **options)
            self.name = "no-face"

        def label(self, images):
            result = super().label(images)
            return LabelResult(result.probs, np.zeros(len(images), bool), ["no face detected"] * len(images))

    register_labeler("no-face", FindsNoFace)
    try:
        path = write_suite(tmp_path, tiny_model_dir, labelers=["no-face"], metrics=["fairness", "fid"],
                          fid={"extractor": "synthfaces", "reference": "synthfaces:biased", "n": 40})
        result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out")], env={"COLUMNS": "400"})
    finally:
        LABELERS.pop("no-face")
    assert result.exit_code == 0, result.output[-3000:]
    assert "not measured: no valid sample (no face detected: 8)" in result.output
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    assert csv["n_valid"].tolist() == [0] and csv["fd"].isna().all() and csv["fid"].notna().all()
    assert csv["invalid_reasons"].tolist() == ["no face detected: 8"]
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "no valid sample, nothing measured: no face detected: 8" in page
    cell_page = next((tmp_path / "out" / "report" / "cells").glob("*.html")).read_text()
    assert "no face detected: 8" in cell_page


# -- FID references --------------------------------------------------------------------------------

def reference_dir(tmp_path, count):
    from audit.zoo.synthfaces import WORLDS, generate

    folder = tmp_path / f"reference-{count}"
    folder.mkdir()
    for i, image in enumerate(generate(count, WORLDS["biased"], seed=77).images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


def test_a_reference_directory_with_fewer_images_than_asked_is_refused_before_generating(tmp_path, tiny_model_dir):
    folder = reference_dir(tmp_path, 14)
    for fid, message in [
        ({"reference": str(folder), "n": 1000}, f"fid.reference {folder} holds 14 images, fewer than fid.n = 1000: "
                                                "add images (FID[synthfaces] needs more than 64"),
        ({"reference": str(folder), "n": 14}, "fid.n 14 is too few reference images for FID[synthfaces], whose "
                                              "features have 64 dimensions"),
        ({"reference": str(tmp_path / "nowhere"), "n": 100}, "no such directory"),
    ]:
        path = write_suite(tmp_path, tiny_model_dir, metrics=["fairness", "fid"],
                           fid={"extractor": "synthfaces", **fid})
        result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out")])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and lines[-1].startswith("error: ") and message in lines[-1], result.output
        assert "Traceback" not in result.output and result.output.count("error") == 1
        assert not (tmp_path / "out" / "cells").exists() and not (tmp_path / "out" / "probes").exists()


def test_fid_records_the_reference_count_it_used(tmp_path, tiny_model_dir):
    folder = reference_dir(tmp_path, 70)
    path = write_suite(tmp_path, tiny_model_dir, metrics=["fairness", "fid"],
                       fid=[{"extractor": "synthfaces", "reference": str(folder), "n": 65}])
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output[-2000:]
    fid = json.loads((only_cell(tmp_path / "out") / "metrics.json").read_text())["fid"]
    assert fid["n_reference"] == 65 and fid["n_requested"] == 65 and fid["feature_dim"] == 64
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert f"reference {folder}, 65 reference images" in page
    # Images replaced in the reference directory: the cached statistics and the FID are redone.
    before = fid["value"]
    for f in sorted(folder.iterdir())[:30]:
        Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 200).save(f)
    assert CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out")]).exit_code == 0
    assert json.loads((only_cell(tmp_path / "out") / "metrics.json").read_text())["fid"]["value"] != before


def test_reference_statistics_are_written_under_a_unique_temporary_name(tmp_path):
    """Parallel Ray tasks computing the same reference used to share one fixed temporary file;
    here another writer's temporary file sits at that name."""
    from audit.run.measure import reference_state

    out = tmp_path / "out"
    (out / "fid" / "synthfaces__synthfaces_biased__n40.tmp").mkdir(parents=True)
    state = reference_state(out, "synthfaces", "synthfaces:biased", 40)
    assert int(state["real_features_num_samples"]) == 40
    assert (out / "fid" / "synthfaces__synthfaces_biased__n40.safetensors").is_file()
