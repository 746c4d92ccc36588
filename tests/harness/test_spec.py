"""Suite files: valid ones plan their cells; each malformed one gives one line and exit code 2."""

import textwrap

import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.spec import SuiteError, load_suite, plan

VALID = {
    "name": "unit",
    "models": [{"name": "ddpm", "source": "zoo:synthfaces-ddpm", "steps": 5},
               {"name": "t2i", "source": "zoo:synthfaces-t2i", "steps": 5, "guidance_scale": 3.0}],
    "methods": [{"name": "none"}, {"name": "prompt"}, {"name": "distribution_guidance", "params": {"scale": 1.0}}],
    "settings": [{"attributes": ["skin_tone"], "target": "uniform"},
                 {"attributes": ["skin_tone", "eyeglasses"], "target": [0.4, 0.1, 0.4, 0.1]},
                 {"attributes": ["skin_tone"], "target": {"dark": 0.9, "light": 0.1}}],
    "samples": 8,
    "batch_size": 4,
}


def write(tmp_path, data, name="suite.yaml"):
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_valid_suite_plans_every_cell_and_marks_inapplicable_ones(tmp_path):
    suite = load_suite(write(tmp_path, VALID))
    cells = plan(suite)
    assert len(cells) == 2 * 3 * 3
    skipped = [c for c in cells if c.skip_reason]
    assert len(skipped) == 3 and all(c.model.name == "ddpm" and c.method.name == "prompt" for c in skipped)
    assert cells[0].seeds == list(range(8))
    assert suite.settings[2].target_vector() == [0.1, 0.9]
    assert suite.settings[1].joint_classes() == ["light&no", "light&yes", "dark&no", "dark&yes"]
    assert len({c.cell_id for c in cells}) == len(cells)


def variant(**changes):
    data = yaml.safe_load(yaml.safe_dump(VALID))
    for dotted, value in changes.items():
        node = data
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if value is DELETE:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return data


DELETE = object()

MALFORMED = {
    "bad yaml": ("name: x\nmodels: [unclosed\n", "invalid YAML"),
    "not a mapping": ("- just\n- a list\n", "must be a YAML mapping"),
    "unknown model": (variant(**{"models.0.source": "zoo:nope"}), "models[0].source: unknown zoo model 'nope'"),
    "unknown method": (variant(**{"methods.1.name": "magic"}), "methods[1].name: unknown method 'magic'"),
    "unknown labeler": (variant(labelers=["oracle"]), "labelers: unknown labeler 'oracle'"),
    "options for an unused labeler": (variant(labeler_options={"age_gender": {"device": "cpu"}}),
                                      "labeler_options names age_gender, which the suite does not use"),
    "unknown attribute": (variant(**{"settings.0.attributes": ["height"]}), "unknown attribute 'height'"),
    "target does not sum to 1": (variant(**{"settings.1.target": [0.5, 0.5, 0.5, 0.5]}), "sum to 1"),
    "target wrong length": (variant(**{"settings.0.target": [0.2, 0.3, 0.5]}), "has 3 proportions"),
    "negative target": (variant(**{"settings.0.target": [1.5, -0.5]}), "must be >= 0"),
    "target unknown class": (variant(**{"settings.2.target": {"purple": 1.0}}), "unknown classes ['purple']"),
    "negative samples": (variant(samples=-5), "samples: Input should be greater than or equal to 1"),
    "zero batch": (variant(batch_size=0), "batch_size: Input should be greater than or equal to 1"),
    "unknown key": (variant(sampels=10), "unknown key 'sampels'; allowed: name, description, models"),
    "unknown nested key": (variant(**{"models.0.stepz": 3}), "models[0].stepz: unknown key 'stepz'"),
    "missing models": (variant(models=DELETE), "models: Field required"),
    "empty methods": (variant(methods=[]), "methods: List should have at least 1 item"),
    "path escaping OUT": (variant(**{"models.0.name": "../../etc"}), "models[0].name: use letters"),
    "method label escaping OUT": (variant(**{"methods.0.label": "../x"}), "methods[0].label: use letters"),
    "probe labeler judges": (variant(labelers=["synthfaces-pseudo"]), "must not judge the result"),
    "bad dtype": (variant(**{"models.0.dtype": "float8"}), "models[0].dtype"),
    "steps wrong type": (variant(**{"models.0.steps": "many"}), "models[0].steps: Input should be a valid integer"),
    "duplicate model names": (variant(**{"models.1.name": "ddpm"}), "model names must be unique"),
    "missing prompts file": (variant(**{"models.1.prompts_file": "nope.txt"}), "prompts_file: nope.txt not found"),
    "eta out of range": (variant(**{"models.0.eta": 2}), "models[0].eta: Input should be less than or equal to 1"),
    "eta without a scheduler that takes it": (
        variant(**{"models.0.eta": 1, "models.0.scheduler": "EulerDiscreteScheduler"}),
        "EulerDiscreteScheduler has no eta; use scheduler: DDIMScheduler"),
    # method params: names from the method's constructor, values checked by their annotations
    "negative scale": (variant(**{"methods.2.params": {"scale": -3}}),
                       "methods[2].params: scale should be greater than 0 or 'auto' (got -3)"),
    "zero scale": (variant(**{"methods.2.params": {"scale": 0}}), "scale should be greater than 0 or 'auto' (got 0)"),
    "scale as text": (variant(**{"methods.2.params": {"scale": "3"}}), "scale should be a valid number or 'auto'"),
    "unknown param": (variant(**{"methods.2.params": {"scale": 1.0, "strength": 3}}),
                      "methods[2].params: unknown param 'strength'; allowed: scale, loss, path, start, stop, "
                      "normalize, grad_tau, correct_confusion, aim, push, auto_tolerance"),
    "param of a method without params": (variant(**{"methods.0.params": {"scale": 1.0}}),
                                         "methods[0].params: unknown param 'scale'; allowed: none"),
    "unknown loss": (variant(**{"methods.2.params": {"loss": "hinge"}}),
                     "methods[2].params: loss should be 'chi2' or 'kl' (got 'hinge')"),
    "unknown push": (variant(**{"methods.2.params": {"push": "some"}}),
                     "push should be 'all', 'surplus', 'assign' or 'assign_once' (got 'some')"),
    "unknown path": (variant(**{"methods.2.params": {"path": "z"}}), "path should be 'h' or 'x' (got 'z')"),
    "stop before start": (variant(**{"methods.2.params": {"start": 0.5, "stop": 0.2}}),
                          "start must be below stop (fractions of the sampling loop), got start=0.5, stop=0.2"),
    "boolean param as text": (variant(**{"methods.2.params": {"normalize": "no"}}),
                              "normalize should be a valid boolean (got 'no')"),
    "unknown prompt variant": (variant(**{"methods.1.params": {"variant": "ethic"}}),
                               "methods[1].params: variant should be 'allocate' or 'ethical' (got 'ethic')"),
    "universal guidance through a labeler without gradients": (
        variant(methods=[{"name": "universal_guidance", "params": {"labeler": "nudenet"}}]),
        "labeler 'nudenet' is not differentiable (universal guidance back-propagates through it); use one of: "),
    # settings against what the labelers declare (read without loading them)
    "classes in another order than the labeler's": (
        variant(**{"settings.0.classes": {"skin_tone": ["dark", "light"]}}),
        "settings[0]: skin_tone classes [dark, light] are not in the order evaluation labeler synthfaces-eval "
        "labels them; write classes: {skin_tone: [light, dark]}"),
    "classes the labeler does not have": (
        variant(**{"settings.0.classes": {"skin_tone": ["pale", "dark"]}}),
        "settings[0]: evaluation labeler synthfaces-eval labels skin_tone as [light, dark], not [pale, dark]"),
    "classes in another order than the probe labeler's": (
        variant(labelers=["age_gender"],
                settings=[{"attributes": ["gender"], "classes": {"gender": ["female", "male"]}},
                          {"attributes": ["skin_tone"], "classes": {"skin_tone": ["dark", "light"]}}]),
        "settings[1]: skin_tone classes [dark, light] are not in the order probe labeler synthfaces-pseudo "
        "labels them"),
    "no evaluation labeler labels the setting": (
        variant(**{"settings.0": {"attributes": ["gender"], "classes": {"gender": ["female", "male"]}}}),
        "settings[0]: no evaluation labeler labels gender (synthfaces-eval labels skin_tone, hair_length, eyeglasses, "
        "smile, hair_color); add one that does to labelers"),
    "labeler option the labeler does not take": (
        variant(labeler_options={"synthfaces-eval": {"colour": "blue"}}),
        "labeler_options.synthfaces-eval: unknown option 'colour'; allowed: device, batch_size"),
    "labeler option out of range": (
        variant(labelers=["synthfaces-eval", "age_gender"], labeler_options={"age_gender": {"age_bins": [40, 20]}}),
        "labeler_options.age_gender: age_bins must be strictly increasing positive ages, got [40, 20]"),
    "labeler option missing": (
        variant(labelers=["synthfaces-eval", "clip_zeroshot"]), "labeler_options.clip_zeroshot: missing model_path"),
    # the suite name names the default output directory runs/NAME
    "suite name escaping runs/": (variant(name="../../elsewhere"), "name: use letters, digits"),
    "absolute suite name": (variant(name="/tmp/x"), "name: use letters, digits"),
    # the file itself
    "not UTF-8": (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9); save the suite file as UTF-8"),
    "key written twice": ("name: a\nsamples: 10\nsamples: 20\n",
                          "line 3, column 1: invalid YAML: key 'samples' appears twice (first on line 2); keep one"),
    "nested too deeply": ("name: " + "[" * 5000 + "]" * 5000 + "\n", "invalid YAML"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_suite_gives_one_line_and_exit_2(tmp_path, case):
    data, expected = MALFORMED[case]
    path = write(tmp_path, data)
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message, message
    assert "\n" not in message
    for dry_run in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out"), *dry_run])
        assert result.exit_code == 2
        lines = [ln for ln in result.output.strip().splitlines() if ln]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_n_override_must_be_positive(tmp_path):
    result = CliRunner().invoke(app, ["run", str(write(tmp_path, VALID)), "--n", "0", "--dry-run"])
    assert result.exit_code == 2 and "--n must be a positive" in result.output


def test_dry_run_prints_plan_and_cost(tmp_path):
    result = CliRunner().invoke(app, ["run", str(write(tmp_path, VALID)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "18 cells" in result.output and "not applicable" in result.output
    assert "UNet image-evaluations" in result.output


def test_prompts_file_is_read_relative_to_the_suite(tmp_path):
    (tmp_path / "prompts.txt").write_text(textwrap.dedent("""\
        # occupations
        a photo of a doctor
        a photo of a nurse
        """))
    suite = load_suite(write(tmp_path, variant(**{"models.1.prompts_file": "prompts.txt"})))
    assert suite.models[1].prompts == ["a photo of a doctor", "a photo of a nurse"]
    t2i_cells = [c for c in plan(suite) if c.model.name == "t2i"]
    assert {c.prompt for c in t2i_cells} == {"a photo of a doctor", "a photo of a nurse"}


def test_the_readme_annotated_suite_is_valid(tmp_path):
    """The suite reference in the README is a real suite, so it cannot drift from the schema."""
    from pathlib import Path

    text = Path(__file__).parents[2].joinpath("README.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme.yaml"
    path.write_text(block)
    suite = load_suite(path)
    assert suite.models and suite.settings and suite.labeler_options == {}


def test_batch_size_is_part_of_a_guided_cell_but_not_of_an_unguided_one():
    from audit.spec import Cell, MethodSpec, ModelSpec, SettingSpec

    def cell_id(method, batch_size):
        return Cell(model=ModelSpec(name="m", source="zoo:synthfaces-ddpm"), method=MethodSpec(name=method),
                    setting=SettingSpec(attributes=["skin_tone"]), prompt=None, samples=8,
                    batch_size=batch_size, seed=0).cell_id

    assert cell_id("none", 16) == cell_id("none", 64)
    assert cell_id("distribution_guidance", 16) != cell_id("distribution_guidance", 64)
    assert cell_id("sample_guidance", 16) != cell_id("sample_guidance", 64)


def test_a_cell_is_identified_by_what_its_method_ran_with_defaults_included(monkeypatch):
    """A cell written under one method default must not be taken as done once that default
    changes: finished cells are skipped by id."""
    from audit import registry
    from audit.methods.distribution_guidance import DistributionGuidance
    from audit.spec import Cell, MethodSpec, ModelSpec, SettingSpec

    def cell_id(**params):
        return Cell(model=ModelSpec(name="m", source="zoo:synthfaces-ddpm"),
                    method=MethodSpec(name="distribution_guidance", params=params),
                    setting=SettingSpec(attributes=["skin_tone"]), prompt=None, samples=8,
                    batch_size=8, seed=0).cell_id

    before = cell_id(scale=2.0)
    assert before == cell_id(scale=2.0, correct_confusion=True)  # the default, written or not
    assert before != cell_id(scale=2.0, correct_confusion=False)

    class OldDefault(DistributionGuidance):
        def __init__(self, probes, target, scale=1.0, correct_confusion=False):
            raise AssertionError("never built")

    monkeypatch.setitem(registry.METHODS, "distribution_guidance", OldDefault)
    assert cell_id(scale=2.0) != before


def test_a_scale_left_out_is_the_methods_suite_default_in_the_cell_id_and_the_plan(tmp_path):
    """A probe-guided method that names no scale is calibrated (`scale: auto`), so its cell id
    says auto and differs from an explicit 1.0 (the constructor's default), which is not
    calibrated; semantic guidance that names none runs at its default 4 and calibrates nothing.
    Before, both probe-guided spellings shared one id though only one was calibrated, and a
    semantic guidance cell without a scale was calibrated under the id of scale 4."""
    from audit.plan_view import calibration_cost
    from audit.registry import METHODS, method_params, resolve

    assert method_params("distribution_guidance", {})["scale"] == "auto"
    assert method_params("sample_guidance", {})["scale"] == "auto"
    assert method_params("semantic_guidance", {})["scale"] == 4.0
    for name in METHODS:  # `auto` by default only where the runner calibrates it (not self_debias's)
        if method_params(name, {}).get("scale") == "auto":
            assert resolve(METHODS, name, "method").calibrates_scale, name
    suite = load_suite(write(tmp_path, {
        **VALID, "models": VALID["models"][1:], "settings": VALID["settings"][:1],
        "methods": [{"name": "distribution_guidance"},
                    {"name": "distribution_guidance", "label": "dg-1", "params": {"scale": 1.0}},
                    {"name": "semantic_guidance"}]}))
    cells = plan(suite)
    assert len({c.cell_id for c in cells}) == 3
    assert calibration_cost(suite, cells)[1][0].startswith("calibration: 1 of 1 scale: auto calibrations to make")


def test_a_zoo_model_samples_with_its_own_eta_unless_the_suite_sets_one():
    """synthfaces-ddpm reproduces its training marginals only under stochastic DDIM, so a suite
    that names no eta gets the zoo's; eta 0 keeps the ids of cells sampled before eta existed."""
    from audit.spec import Cell, MethodSpec, ModelSpec, SettingSpec
    from audit.zoo.recipes import RECIPES

    def cell(**model):
        return Cell(model=ModelSpec(name="m", source="zoo:synthfaces-ddpm", **model), method=MethodSpec(name="none"),
                    setting=SettingSpec(attributes=["skin_tone"]), prompt=None, samples=8, batch_size=8, seed=0)

    assert RECIPES["synthfaces-ddpm"].sampling_eta == 1.0
    assert cell().model.eta == 1.0 and cell().cell_id == cell(eta=1.0).cell_id
    assert cell(eta=0).model.eta == 0.0 and cell(eta=0).cell_id != cell().cell_id
    assert "eta" not in cell(eta=0).model.identity()  # deterministic DDIM, as every cell before eta
    assert ModelSpec(name="t", source="zoo:synthfaces-t2i").eta is None  # t2i has no sampler default
    assert ModelSpec(name="e", source="zoo:synthfaces-ddpm", scheduler="EulerDiscreteScheduler").eta is None


def test_yes_and_no_are_read_as_the_class_names_written(tmp_path):
    """PyYAML reads YAML 1.1, where unquoted no/yes/on/off are booleans; the zoo's eyeglasses and
    smile classes are no/yes. Keys and list items are names, so they stay the words written; a
    value after `key:` is still a boolean."""
    path = write(tmp_path, textwrap.dedent("""\
        name: glasses
        models: [{name: t2i, source: "zoo:synthfaces-t2i", steps: 2}]
        methods:
          - name: prompt
          - {name: distribution_guidance, params: {scale: 2.0, normalize: no, correct_confusion: off}}
        settings:
          - attributes: [eyeglasses]
            target: {no: 0.7, yes: 0.3}
          - attributes: [smile]
            classes: {smile: [no, yes]}
            target: {yes: 0.5, no: 0.5}
        phrases: {eyeglasses: {no: "without glasses", yes: "wearing glasses"}}
        """))
    suite = load_suite(path)
    assert suite.settings[0].target_vector() == [0.7, 0.3]
    assert suite.settings[1].class_lists() == [["no", "yes"]]
    assert suite.phrase("eyeglasses", "yes") == "wearing glasses"
    assert suite.methods[1].params == {"scale": 2.0, "normalize": False, "correct_confusion": False}
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"], terminal_width=200)
    assert result.exit_code == 0, result.output


def test_a_class_order_other_than_the_labelers_is_refused_by_the_dry_run_with_the_order_to_write(tmp_path):
    """Guidance aims the target's proportions at the probe labeler's class order: a suite in
    another order would silently guide toward the swapped target, so it is refused up front."""
    path = write(tmp_path, variant(settings=[{"attributes": ["skin_tone"], "classes": {"skin_tone": ["dark", "light"]},
                                              "target": [0.9, 0.1]}]))
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"], terminal_width=400)
    assert result.exit_code == 2
    assert "write classes: {skin_tone: [light, dark]}" in result.output.strip().splitlines()[-1]


def test_the_suite_name_stays_a_directory_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default OUT is runs/NAME: runs/../../outside would be beside tmp_path
    path = write(tmp_path, variant(name="../../outside"))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "name: use letters, digits" in result.output
    assert not (tmp_path.parent / "outside").exists()
