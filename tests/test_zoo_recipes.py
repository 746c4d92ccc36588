"""Every zoo recipe runs (a few steps), checkpoints, resumes and exports loadable weights.
The committed weights are never retrained here."""

import dataclasses
import json
import shutil

import pytest
import torch

from audit.models.adapter import ModelAdapter
from audit.zoo.recipes import RECIPES
from audit.zoo.train_diffusion import train, training_batch, training_timesteps

SMALL_UNET = {"block_out_channels": (8, 16, 16, 16), "norm_num_groups": 4}


def small(name, **changes):
    recipe = RECIPES[name]
    unet = {**recipe.unet, **SMALL_UNET}
    unet["attention_head_dim"] = 2 if recipe.conditional else 8
    return dataclasses.replace(recipe, unet=unet, batch_size=4, warmup_steps=1, **changes)


def test_training_batches_are_a_function_of_the_step():
    recipe = small("synthfaces-t2i", steps=4)
    x1, c1 = training_batch(recipe, 3)
    x2, c2 = training_batch(recipe, 3)
    assert torch.equal(x1, x2) and c1 == c2
    assert not torch.equal(x1, training_batch(recipe, 4)[0])


def test_timestep_focus_draws_its_share_of_each_batch_from_its_range(tmp_path):
    recipe = RECIPES["synthfaces-ddpm"]
    plain = training_timesteps(recipe, 4000, 1000, torch.Generator().manual_seed(3))
    assert torch.equal(plain, torch.randint(0, 1000, (4000,), generator=torch.Generator().manual_seed(3)))
    focused = dataclasses.replace(recipe, timestep_focus=(600, 1000), timestep_focus_share=0.5)
    t = training_timesteps(focused, 4000, 1000, torch.Generator().manual_seed(3))
    assert int(t.min()) >= 0 and int(t.max()) < 1000
    assert abs(float((t >= 600).float().mean()) - (0.5 + 0.5 * 0.4)) < 0.03  # focused half + the uniform half's 40%
    # a focused fine-tune trains and says so in its export
    train(small("synthfaces-ddpm", steps=2, timestep_focus=(600, 1000)), tmp_path / "work", tmp_path / "out",
          log=lambda s: None)
    info = json.loads((tmp_path / "out" / "training.json").read_text())
    assert info["timestep_focus"] == [600, 1000] and info["timestep_focus_share"] == 0.5


def test_unconditional_recipe_trains_resumes_and_exports(tmp_path):
    recipe = small("synthfaces-ddpm", steps=3)
    work, out = tmp_path / "work", tmp_path / "out"
    assert train(recipe, work, out, log=lambda s: None) == 3
    assert json.loads((out / "training.json").read_text())["steps"] == 3
    longer = dataclasses.replace(recipe, steps=5)
    messages = []
    assert train(longer, work, out, log=messages.append) == 5
    assert any("resumed" in m and "step 3" in m for m in messages)
    # Without the work checkpoint (a new session), training warm-starts from the export.
    (work / "checkpoint.pt").unlink()
    messages.clear()
    assert train(dataclasses.replace(recipe, steps=6), work, out, log=messages.append) == 6
    assert any("warm-started" in m and "step 5" in m for m in messages)
    adapter = ModelAdapter.from_directory(out)
    images = adapter.generate([0, 1], steps=2).images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_text_to_image_recipe_exports_a_loadable_pipeline(tmp_path):
    recipe = small("synthfaces-t2i", steps=2)
    train(recipe, tmp_path / "work", tmp_path / "out", log=lambda s: None)
    adapter = ModelAdapter.from_directory(tmp_path / "out")
    assert adapter.conditional
    images = adapter.generate([0, 1], prompts=["a photo of a person", "a photo of a person with dark skin"],
                              steps=2, guidance_scale=3.0).images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_classifier_recipes_train_and_save_confusion(tmp_path):
    from audit.zoo.networks import SynthFacesCNN
    from audit.zoo.train_classifier import train as train_classifier

    for name in ("synthfaces-pseudo", "synthfaces-features"):
        recipe = dataclasses.replace(RECIPES[name], steps=3, batch_size=8)
        train_classifier(recipe, tmp_path, tmp_path / name, log=lambda s: None, heldout=400)
        model = SynthFacesCNN.load(tmp_path / name)
        confusion = json.loads((tmp_path / name / "confusion.json").read_text())
        assert confusion["heldout"]["n"] == 400
        matrix = confusion["attributes"]["hair_color"]["confusion"]
        assert len(matrix) == 4 and sum(map(sum, matrix)) == 400
        assert model(torch.zeros(2, 3, 32, 32))["skin_tone"].shape == (2, 2)


def test_skip_dropout_zeroes_deep_skips_per_sample_in_training_only(tiny_unet):
    """The regulariser that makes zoo decoders read h: dropped samples lose their deep skips
    (their output changes), kept samples and eval-mode forwards are untouched."""
    import copy

    from audit.zoo.train_diffusion import SkipDropout

    unet = copy.deepcopy(tiny_unet).train()
    x, t = torch.randn(8, 3, 32, 32), torch.full((8,), 500)
    with torch.no_grad():
        reference = unet(x, t).sample
        SkipDropout(unet, 0.5, 1, torch.Generator().manual_seed(0))
        dropped = unet(x, t).sample
        keep = torch.rand(8, generator=torch.Generator().manual_seed(0)) >= 0.5
        changed = (dropped - reference).flatten(1).abs().amax(1) > 1e-6
        assert 0 < int(keep.sum()) < 8
        assert torch.equal(changed, ~keep)
        assert torch.allclose(unet.eval()(x, t).sample, reference, atol=1e-5)


def test_text_to_image_training_conditions_on_the_frozen_clip_text_tower(tmp_path):
    """synthfaces-t2i reads prompts through synthfaces-clip's text tower, which training leaves
    untouched and the export carries (with the CLIP's tokenizer), and which tells apart the
    eyeglasses and smile phrases that a jointly trained encoder had collapsed."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    from audit.zoo import zoo_path
    from audit.zoo.recipes import CLIP_TEXT, T2I_UNET
    from audit.zoo.train_diffusion import encode_text

    assert T2I_UNET["cross_attention_dim"] == CLIP_TEXT["hidden_size"]
    recipe = small("synthfaces-t2i", steps=2)
    train(recipe, tmp_path / "work", tmp_path / "out", log=lambda s: None)
    clip = CLIPModel.from_pretrained(zoo_path("synthfaces-clip"))
    exported = CLIPTextModel.from_pretrained(tmp_path / "out" / "text_encoder", torch_dtype=torch.float32)
    for key, value in clip.text_model.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value), key
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    assert tokenizer.get_vocab() == CLIPTokenizer.from_pretrained(zoo_path("synthfaces-clip")).get_vocab()
    phrases = ("wearing eyeglasses", "without eyeglasses", "smiling", "not smiling")
    h = encode_text(tokenizer, exported.eval(), [f"a photo of a person {p}" for p in phrases])
    assert (h[0] - h[1]).norm() > 0.2 * h[0].norm() and (h[2] - h[3]).norm() > 0.2 * h[2].norm()


def test_a_warm_start_across_a_text_encoder_change_keeps_the_image_model(tmp_path):
    """An export conditioned on another text encoder (the jointly trained, wider one) warm-starts
    the frozen-CLIP recipe: every UNet weight carries over except the cross-attention key/value
    projections, whose values start at zero; any other shape change is a one-line error."""
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import EMAModel

    from audit.zoo.train_diffusion import build_models, warm_start

    recipe = small("synthfaces-t2i", steps=8)
    old = UNet2DConditionModel(**{**recipe.unet, "cross_attention_dim": 128})
    old.save_pretrained(tmp_path / "old" / "unet")
    (tmp_path / "old" / "training.json").write_text(json.dumps({"steps": 5, "train_seconds": 9.0}))
    unet = build_models(recipe)[0]
    step, seconds, fresh = warm_start(recipe, unet, EMAModel(list(unet.parameters())), tmp_path / "old")
    assert (step, seconds) == (5, 9.0)
    assert fresh and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in fresh)
    state = unet.state_dict()
    for key, value in old.state_dict().items():
        if key not in fresh:
            assert torch.equal(state[key], value), key
        elif ".attn2.to_v." in key:
            assert not state[key].any()
    messages = []
    assert train(recipe, tmp_path / "work", tmp_path / "new", log=messages.append,
                 warm_start_dir=tmp_path / "old") == 8
    assert any("start afresh" in m for m in messages)
    # The new run's own export names its encoder: warm-starting from it keeps every weight.
    new = build_models(recipe)[0]
    assert warm_start(recipe, new, EMAModel(list(new.parameters())), tmp_path / "new")[2] == []
    exported = UNet2DConditionModel.from_pretrained(tmp_path / "new" / "unet", torch_dtype=torch.float32)
    saved = exported.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in new.state_dict().items())

    other = UNet2DConditionModel(**{**recipe.unet, "block_out_channels": (8, 16, 16, 32)})
    other.save_pretrained(tmp_path / "other" / "unet")
    (tmp_path / "other" / "training.json").write_text(json.dumps({"steps": 5}))
    with pytest.raises(ValueError, match="another shape.*--export-dir"):
        warm_start(recipe, build_models(recipe)[0], EMAModel(list(unet.parameters())), tmp_path / "other")


def test_a_checkpoint_of_another_recipe_version_is_a_clear_error(tmp_path):
    recipe = small("synthfaces-t2i", steps=1)
    train(recipe, tmp_path / "work", tmp_path / "out", log=lambda s: None)
    wider = dataclasses.replace(recipe, steps=2, unet={**recipe.unet, "block_out_channels": (8, 16, 16, 32)})
    with pytest.raises(ValueError, match="checkpoint.pt was written by another version.*delete it"):
        train(wider, tmp_path / "work", tmp_path / "out", log=lambda s: None)


def test_training_exported_elsewhere_warm_starts_from_the_zoo_weights(tmp_path):
    """`zoo train --export-dir` keeps the zoo's weights (and the probes keyed by them) intact:
    a new run warm-starts from the zoo's export, ramps the fresh optimizer's lr up again, and
    later runs continue from their own export; the export's history note survives."""
    recipe = dataclasses.replace(small("synthfaces-ddpm", steps=2), warmup_steps=4)
    zoo, wip = tmp_path / "zoo", tmp_path / "wip"
    train(recipe, tmp_path / "zoo-work", zoo, log=lambda s: None)
    zoo_weights = (zoo / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    messages = []
    longer = dataclasses.replace(recipe, steps=4)
    assert train(longer, tmp_path / "work", wip, log=messages.append, warm_start_dir=zoo) == 4
    assert any("warm-started" in m and "step 2" in m and str(zoo) in m for m in messages)
    assert (zoo / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == zoo_weights
    assert json.loads((zoo / "training.json").read_text())["steps"] == 2
    info = json.loads((wip / "training.json").read_text())
    assert info["steps"] == 4
    info["history"] = "steps 0-2 in the zoo run"
    (wip / "training.json").write_text(json.dumps(info))
    shutil.rmtree(tmp_path / "work")
    messages.clear()
    assert train(dataclasses.replace(recipe, steps=5), tmp_path / "work", wip, log=messages.append,
                 warm_start_dir=zoo) == 5
    assert any("warm-started" in m and "step 4" in m and str(wip) in m for m in messages)
    assert json.loads((wip / "training.json").read_text())["history"] == "steps 0-2 in the zoo run"


def test_a_warm_start_ramps_the_learning_rate_up_again(tmp_path, monkeypatch):
    """Adam's first steps after a fresh start move every weight by about lr: the re-warm-up
    keeps a trained model from being jolted at the schedule's full lr."""
    from audit.zoo import train_diffusion

    recipe = dataclasses.replace(small("synthfaces-ddpm", steps=2), warmup_steps=4)
    train(recipe, tmp_path / "work", tmp_path / "out", log=lambda s: None)
    shutil.rmtree(tmp_path / "work")
    seen = []
    step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    train(dataclasses.replace(recipe, steps=6), tmp_path / "work", tmp_path / "out", log=lambda s: None)
    schedule = [recipe.lr * train_diffusion.lr_factor(s, dataclasses.replace(recipe, steps=6)) for s in range(2, 6)]
    assert seen == [pytest.approx(lr * (i + 1) / 4) for i, lr in enumerate(schedule)]


def test_zoo_check_measures_a_candidate_export_in_place_of_the_zoo_weights(tmp_path, monkeypatch):
    """`zoo check --candidate DIR` judges a training export before it replaces the committed
    weights; its rows come from the candidate (a 1-step model is far from the bars). The t2i bars
    sample the conditional distribution (CFG 1) unless --t2i-guidance-scale asks for more, from
    seed 0 unless --first-seed moves them to other seeds."""
    from typer.testing import CliRunner

    from audit.cli import app
    from audit.zoo import check

    recipe = small("synthfaces-t2i", steps=1)
    train(recipe, tmp_path / "work", tmp_path / "candidate", log=lambda s: None)
    generate = check.generate_in_batches
    scales, first_seeds = [], []

    def recording(adapter, seeds, batch_size, prompts=None, **kwargs):
        scales.append(kwargs["guidance_scale"])
        first_seeds.append(seeds[0])
        return generate(adapter, seeds, batch_size, prompts, **kwargs)

    monkeypatch.setattr(check, "generate_in_batches", recording)
    args = ["zoo", "check", "--only", "synthfaces-t2i", "--candidate", str(tmp_path / "candidate"), "--n", "8",
            "--n-prompt", "4", "--steps", "2", "--threads", "1"]
    report = tmp_path / "check.json"
    result = CliRunner().invoke(app, [*args, "--json", str(report)])
    rows = json.loads(report.read_text())
    assert result.exit_code == 1  # an untrained candidate fails its bars
    assert set(scales) == {1.0} and all("CFG 1.0" in r["detail"] for r in rows)
    assert set(first_seeds) == {0} and all("from seed 0" in r["detail"] for r in rows)
    scales.clear()
    first_seeds.clear()
    guided = CliRunner().invoke(app, [*args, "--t2i-guidance-scale", "2.5", "--first-seed", "100",
                                      "--json", str(tmp_path / "cfg.json")])
    assert guided.exit_code == 1 and set(scales) == {2.5} and set(first_seeds) == {100}
    assert all("CFG 2.5" in r["detail"] and "from seed 100" in r["detail"]
               for r in json.loads((tmp_path / "cfg.json").read_text()))
    assert {r["model"] for r in rows} == {"synthfaces-t2i"}
    from audit.zoo.synthfaces import ATTRIBUTES

    assert sum("gives" in r["check"] for r in rows) == sum(map(len, ATTRIBUTES.values()))
    assert all(r["value"] is not None for r in rows)
    assert any(r["check"].endswith("marginal gap skin_tone") for r in rows)


def test_zoo_check_shows_each_figure_as_it_comes_and_keeps_them_when_stopped(tmp_path, monkeypatch):
    """A full t2i check takes hours on 2 cores: each row is printed and written to --json as soon as
    it is measured, so a check stopped after the neutral prompt still leaves its marginals."""
    from typer.testing import CliRunner

    from audit.cli import app
    from audit.zoo import check

    train(small("synthfaces-t2i", steps=1), tmp_path / "work", tmp_path / "candidate", log=lambda s: None)
    label = check.label_probabilities
    calls = []

    def stop_at_the_first_attribute_prompt(images01):
        calls.append(len(images01))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return label(images01)

    monkeypatch.setattr(check, "label_probabilities", stop_at_the_first_attribute_prompt)
    report = tmp_path / "check.json"
    result = CliRunner().invoke(app, ["zoo", "check", "--only", "synthfaces-t2i", "--candidate",
                                      str(tmp_path / "candidate"), "--n", "6", "--n-prompt", "3",
                                      "--steps", "2", "--threads", "1", "--json", str(report)])
    assert result.exit_code == 130 and calls == [6, 3]  # Ctrl-C after the neutral prompt
    rows = json.loads(report.read_text())
    from audit.zoo.synthfaces import ATTRIBUTES

    assert [r["check"] for r in rows] == [f"'a photo of a person' marginal gap {a}" for a in ATTRIBUTES]
    for r in rows:
        assert f"synthfaces-t2i: {r['check']} = {r['value']:.4f} (<= 0.07: " in result.output


def test_zoo_check_rejects_a_candidate_it_cannot_place(tmp_path):
    from typer.testing import CliRunner

    from audit.cli import app

    runner = CliRunner()
    both = runner.invoke(app, ["zoo", "check", "--candidate", str(tmp_path)])
    assert both.exit_code == 2 and "exactly one diffusion model" in both.output
    empty = runner.invoke(app, ["zoo", "check", "--only", "synthfaces-ddpm", "--candidate", str(tmp_path)])
    assert empty.exit_code == 2 and "no training.json" in empty.output
    typo = runner.invoke(app, ["zoo", "check", "--only", "ddpm"])
    assert typo.exit_code == 2 and "allowed: labelers" in typo.output


def test_zoo_train_rejects_unknown_models_and_devices():
    from typer.testing import CliRunner

    from audit.cli import app

    runner = CliRunner()
    unknown = runner.invoke(app, ["zoo", "train", "synthfaces-gan"])
    assert unknown.exit_code == 2 and "allowed: synthfaces-ddpm" in unknown.output
    device = runner.invoke(app, ["zoo", "train", "synthfaces-ddpm", "--device", "tpu"])
    assert device.exit_code == 2 and "cpu or cuda" in device.output


def test_zoo_list_shows_a_training_run_in_progress(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import audit.zoo
    from audit.cli import app

    wip = tmp_path / "wip"
    (wip / "synthfaces-ddpm").mkdir(parents=True)
    (wip / "synthfaces-ddpm" / "training.json").write_text(json.dumps({"steps": 1234}))
    monkeypatch.setattr(audit.zoo, "WIP_DIR", wip)
    result = CliRunner().invoke(app, ["zoo", "list"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    line = next(row for row in result.output.splitlines() if "synthfaces-ddpm" in row)
    assert "in training: 1234 steps" in line
    assert "in training" not in next(row for row in result.output.splitlines() if "synthfaces-eval" in row)


def test_zoo_train_reports_a_stale_checkpoint_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from audit.cli import app

    (tmp_path / "synthfaces-t2i").mkdir()
    torch.save({"unet": {}, "optimizer": {}, "ema": {}, "step": 1, "wall": 0.0},
               tmp_path / "synthfaces-t2i" / "checkpoint.pt")
    result = CliRunner().invoke(app, ["zoo", "train", "synthfaces-t2i", "--workdir", str(tmp_path),
                                      "--export-dir", str(tmp_path / "out"), "--threads", "1"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output  # (above it: loading progress bars)
    assert "another version of the synthfaces-t2i recipe" in errors[0] and "delete it" in errors[0]
    assert not (tmp_path / "out").exists()


def test_zoo_check_samples_the_ddpm_with_the_eta_suites_use(monkeypatch):
    """The bars are about the model as suites sample it: unset, --ddpm-eta is the zoo's."""
    from audit.zoo import check
    from audit.zoo.recipes import RECIPES

    etas = []
    monkeypatch.setattr(check, "check_ddpm", lambda rows, n, steps, batch, candidate, seed, eta: etas.append(eta))
    check.run_check(models=("synthfaces-ddpm",))
    check.run_check(models=("synthfaces-ddpm",), ddpm_eta=0.0)
    assert etas == [RECIPES["synthfaces-ddpm"].sampling_eta, 0.0] and etas[0] == 1.0
