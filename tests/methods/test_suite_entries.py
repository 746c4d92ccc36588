"""The three training-free methods as a suite names them: planned where they apply, bad params
refused with one line when the suite loads."""

from __future__ import annotations

import pytest
import yaml

from audit.spec import SuiteError, load_suite, plan

SUITE = {
    "name": "unit",
    "models": [{"name": "ddpm", "source": "zoo:synthfaces-ddpm", "steps": 5},
               {"name": "t2i", "source": "zoo:synthfaces-t2i", "steps": 5, "guidance_scale": 3.0}],
    "methods": [{"name": "self_debias"}, {"name": "prompt_projection", "params": {"noise": 0.5}},
                {"name": "semantic_guidance", "params": {"scale": 3.0}}],
    "settings": [{"attributes": ["skin_tone"], "target": "uniform"}],
    "samples": 8,
    "batch_size": 4,
}


def test_text_only_methods_are_not_applicable_to_the_unconditional_model(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    cells = plan(load_suite(path))
    skipped = {(c.model.name, c.method.name) for c in cells if c.skip_reason}
    assert skipped == {("ddpm", "prompt_projection"), ("ddpm", "semantic_guidance")}


@pytest.mark.parametrize(("method", "message"), [
    ({"name": "self_debias", "params": {"k": 3, "shares": [0.5, 0.5]}},
     "methods[0].params: shares must be 3 non-negative proportions summing to 1"),
    ({"name": "prompt_projection", "params": {"energy": 2}}, "methods[0].params: energy should be less than"),
    ({"name": "semantic_guidance", "params": {"warmup": 0.9, "stop": 0.5}},
     "methods[0].params: warmup must be below stop"),
])
def test_bad_params_stop_the_suite_with_one_line(tmp_path, method, message):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "methods": [method]}))
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    assert message in str(error.value) and "\n" not in str(error.value)
