"""Semantic guidance: each image's noise prediction is edited toward its allocated class's phrase."""

from __future__ import annotations

import json

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


def test_an_aim_reallocates_the_images_and_is_recorded():
    method = SemanticGuidance(PHRASES, [0.5, 0.5], aim=[0.2, 0.8])
    seeds = list(range(100))
    method.start_cell(seeds)
    assert np.bincount(method.cell_choices(seeds), minlength=2).tolist() == [20, 80]
    assert method.config()["target"] == [0.5, 0.5] and method.config()["aim"] == [0.2, 0.8]
    with pytest.raises(ValueError, match="aim must be 2 non-negative proportions"):
        check_params(SemanticGuidance, {"aim": [0.5, 0.6]}, "params")


def auto_suite(tmp_path, source="zoo:synthfaces-t2i", **changes):
    import yaml

    from audit.spec import load_suite

    suite = {"name": "auto", "models": [{"name": "t2i", "source": str(source), "steps": 2,
                                         "guidance_scale": 2.0, "prompts": [PROMPT]}],
             "methods": [{"name": "semantic_guidance", "params": {"scale": "auto", "threshold": 0.5}}],
             "settings": [{"attributes": ["skin_tone"], "target": "uniform"}],
             "samples": 4, "batch_size": 4, "labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo",
             "metrics": ["fairness"], **changes}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return load_suite(path)


def test_auto_scale_needs_a_probe_labeler_apart_from_the_evaluation_labelers(tmp_path):
    from audit.spec import SuiteError

    with pytest.raises(SuiteError, match="is also an evaluation labeler"):
        auto_suite(tmp_path, probe_labeler="synthfaces-eval")
    fixed = [{"name": "semantic_guidance", "params": {"scale": 3.0}}]
    assert auto_suite(tmp_path, probe_labeler="synthfaces-eval", methods=fixed)  # a fixed scale judges nothing


def test_auto_scale_is_calibrated_per_cell_on_trial_images_judged_by_the_probe_labeler(tmp_path, monkeypatch,
                                                                                       tiny_text_model_dir):
    """The calibration the probe-guided methods use chooses the edit scale: trial images on
    calibration seeds, labelled by the suite's probe labeler; the cell is generated at the chosen
    scale (and aim, where the miss was corrected), recorded in its manifest."""
    import json

    from audit.run import calibration
    from audit.run.suite import run_suite

    monkeypatch.setattr(calibration, "calibration_samples", lambda k: 16)  # four batches per trial
    frame = run_suite(auto_suite(tmp_path, tiny_text_model_dir), tmp_path / "out")
    assert set(frame["status"]) == {"done"}
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "calibration").glob("*.json")]
    config = record["config"]
    assert config["method"] == "semantic_guidance" and config["judge"] == "synthfaces-pseudo"
    assert config["phrases"] == ["with light skin", "with dark skin"] and config["params"]["threshold"] == 0.5
    assert len(record["tried"]) >= 2 and record["scale"] == calibration.interpolated_scale(record["tried"], [0.5, 0.5])
    missed = min(t["fd"] for t in record["tried"]) > record["noise"]
    assert bool(record["aimed"]) == missed
    cell = next((tmp_path / "out" / "cells").iterdir())
    method = json.loads((cell / "manifest.json").read_text())["method"]
    assert method["scale"] == record["scale"] and method["aim"] == pytest.approx(record["aim"] or [0.5, 0.5])
    # The dry run finds the record: a second run would not calibrate again.
    from audit.plan_view import calibration_cost
    from audit.spec import plan

    suite = auto_suite(tmp_path, tiny_text_model_dir)
    assert calibration_cost(suite, plan(suite), tmp_path / "out")[1] == [
        "calibration: all 1 scale: auto calibrations shipped or cached (no cost)"]
    # Another phrase for a class is another edit: its calibration is not reused.
    phrased = auto_suite(tmp_path, tiny_text_model_dir, phrases={"skin_tone": {"dark": "with very dark skin"}})
    from audit.registry import METHODS, resolve
    from audit.run.build import supplied_arguments
    from audit.run.context import RunContext
    from audit.store import RunStore

    ctx = RunContext(suite=phrased, store=RunStore(tmp_path / "out"), log=lambda s: None)
    (other,) = plan(phrased)
    factory = resolve(METHODS, "semantic_guidance", "method")
    params = dict(other.method.params)
    changed = calibration.calibration_config(ctx, other, factory, supplied_arguments(ctx, other, factory, params),
                                             params, n=16)
    assert changed["phrases"][1] == "with very dark skin"
    assert calibration.record_name(changed) != calibration.record_name(config)


def test_a_calibrated_method_without_an_aim_keeps_its_miss(tmp_path, tiny_text_model_dir):
    """A plug-in that calibrates its scale but cannot be aimed elsewhere (no `aim` param) gets
    the chosen scale and no aim correction, rather than a constructor error mid-calibration."""
    from audit.run.build import supplied_arguments
    from audit.run.calibration import calibrate
    from audit.run.context import RunContext
    from audit.spec import plan
    from audit.store import RunStore

    class Unaimed(SemanticGuidance):
        def __init__(self, phrases, target, scale: float = 4.0, threshold: float = 0.95):
            super().__init__(phrases, target, scale=scale, threshold=threshold)

    suite = auto_suite(tmp_path, tiny_text_model_dir)
    ctx = RunContext(suite=suite, store=RunStore(tmp_path / "out"), log=lambda s: None)
    (cell,) = plan(suite)
    params = dict(cell.method.params)
    chosen = calibrate(ctx, cell, Unaimed, supplied_arguments(ctx, cell, Unaimed, params), params, n=16)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "calibration").glob("*.json")]
    assert min(t["fd"] for t in record["tried"]) > record["noise"]  # a miss the aim would have corrected
    assert record["aimed"] == [] and chosen == {"scale": record["scale"], "aim": None}
