"""Plug-ins: the zoo registers through the `diffaudit.plugins` entry point like a third-party
package; another package's model source, labeler and method work through the same registry; a
broken plug-in is named and skipped; a model from a source that names no defaults gets no
SynthFaces labelers or FID silently; a method's capabilities, not its name, drive the runner."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import numpy as np
import pytest
import yaml

from audit.spec import SuiteError, load_suite, plan


def test_the_zoo_is_an_installed_plug_in():
    import audit.registry as registry

    (zoo,) = [e for e in entry_points(group="diffaudit.plugins") if e.name == "synthfaces"]
    assert zoo.value == "audit.zoo.plugin:register" and "synthfaces" in registry.PLUGINS
    assert "zoo" in registry.SOURCES and "synthfaces" in registry.FID_EXTRACTORS
    assert registry.LABELER_OPTIONS["synthfaces-eval"] == {"name": "synthfaces-eval"}
    assert registry.ATTRIBUTES["skin_tone"] == ["light", "dark"]


def _install_plugin(tmp_path, module_source: str, name: str = "toyworld") -> dict:
    """A package `name` with a dist-info whose entry point registers it, on a PYTHONPATH of its own."""
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(textwrap.dedent(module_source))
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[diffaudit.plugins]\n{name} = {name}:register\n")
    return {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}


TOY_WORLD = """
    from pathlib import Path

    from audit.plugins import ModelNotAvailable, ModelSource

    class ToySource(ModelSource):
        def names(self):
            return ["tiny"]

        def check(self, name):
            if name != "tiny":
                raise ValueError(f"unknown toy model {name!r}; allowed: tiny")

        def resolve(self, name, revision):
            raise ModelNotAvailable("toy weights are elsewhere")

        def is_text_model(self, name):
            return False

        def suite_defaults(self, name):
            return {"labelers": ["toy-eval"], "metrics_note": "ignored"}

        def seconds_per_image_step(self, name):
            return 0.5

    def register(registry):
        registry.register_source("toy", ToySource())
        # one labeler class under another name, its network fixed by the registration
        registry.register_labeler("toy-eval", "audit.zoo.labelers:SynthFacesLabeler", name="synthfaces-eval")
"""


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_a_third_party_source_and_labeler_register_through_the_entry_point(tmp_path):
    env = _install_plugin(tmp_path, TOY_WORLD)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "toy", "models": [{"name": "m", "source": "toy:tiny", "steps": 4}],
                                     "methods": [{"name": "none"}], "settings": [{"attributes": ["skin_tone"]}],
                                     "samples": 10}))
    done = _run(f"""
        import json
        import audit.registry as registry
        from audit.spec import load_suite, plan
        from audit.plan_view import cell_cost
        suite = load_suite({str(suite)!r})
        cells = plan(suite)
        print(json.dumps({{"plugins": registry.PLUGINS, "labelers": suite.labelers, "metrics": suite.metrics,
                          "fid": suite.fid, "cost": cell_cost(cells[0])}}))
    """, env)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.strip().splitlines()[-1])
    # its default labeler came from its source; no FID reference named, so the default metrics leave FID out
    assert "toyworld" in said["plugins"] and said["labelers"] == ["toy-eval"]
    assert said["metrics"] == ["fairness"] and said["fid"] == []
    assert said["cost"] == [40.0, 20.0]  # 10 samples x 4 steps; 0.5 s per image-step from the source
    bad = _run(f"""
        from audit.spec import load_suite
        import yaml, pathlib
        path = pathlib.Path({str(suite)!r})
        data = yaml.safe_load(path.read_text())
        data["models"][0]["source"] = "toy:huge"
        path.write_text(yaml.safe_dump(data))
        load_suite(path)
    """, env)
    assert "models[0].source: unknown toy model 'huge'; allowed: tiny" in bad.stderr


def test_a_broken_plug_in_is_named_and_skipped(tmp_path):
    env = _install_plugin(tmp_path, "def register(registry):\n    raise RuntimeError('no weights here')\n",
                          name="brokenworld")
    done = _run("import audit.registry as r; print(sorted(r.PLUGINS))", env)
    assert done.returncode == 0 and "synthfaces" in done.stdout and "brokenworld" not in done.stdout
    assert "diffaudit plug-in brokenworld (brokenworld:register) failed to load: no weights here" in done.stderr


def _suite(tmp_path, model_dir, **changes):
    data = {"name": "mine", "models": [{"name": "tiny", "source": str(model_dir), "steps": 2}],
            "methods": [{"name": "none"}], "settings": [{"attributes": ["skin_tone"]}], "samples": 4,
            "batch_size": 2, **changes}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_model_outside_the_zoo_gets_no_zoo_labelers_or_fid_silently(tmp_path, tiny_model_dir):
    with pytest.raises(SuiteError, match=r"labelers: required: name the evaluation labelers \(no model's source"):
        load_suite(_suite(tmp_path, tiny_model_dir))
    suite = load_suite(_suite(tmp_path, tiny_model_dir, labelers=["synthfaces-eval"]))
    assert suite.metrics == ["fairness"] and suite.fid == [] and suite.probe_labeler is None
    with pytest.raises(SuiteError, match=r"fid: metrics names fid but the suite gives no fid reference"):
        load_suite(_suite(tmp_path, tiny_model_dir, labelers=["synthfaces-eval"], metrics=["fairness", "fid"]))
    with pytest.raises(SuiteError, match=r"fid.reference: required .*give reference"):
        load_suite(_suite(tmp_path, tiny_model_dir, labelers=["synthfaces-eval"], fid={"extractor": "synthfaces"}))
    with pytest.raises(SuiteError, match=r"probe_labeler: required by methods\[1\] \(distribution_guidance\)"):
        load_suite(_suite(tmp_path, tiny_model_dir, labelers=["synthfaces-eval"],
                          methods=[{"name": "none"}, {"name": "distribution_guidance"}]))
    with pytest.raises(SuiteError, match=r"unknown model source prefix 'toy:'; allowed: hf:, custom:, images:, zoo:"):
        load_suite(_suite(tmp_path, "toy:tiny", labelers=["synthfaces-eval"]))


def test_zoo_suites_take_the_zoo_defaults_and_keep_their_cell_ids(tmp_path):
    suite = load_suite("benchmarks/quickstart.yaml")
    assert suite.labelers == ["synthfaces-eval"] and suite.probe_labeler == "synthfaces-pseudo"
    assert [(f.extractor, f.reference) for f in suite.fid] == [("synthfaces", "synthfaces:biased")]
    ddpm = next(m for m in suite.models if m.source == "zoo:synthfaces-ddpm")
    assert ddpm.eta == 1.0  # the zoo model's own sampler


def test_a_method_is_one_class_the_runner_reads_by_its_capabilities(tmp_path, tiny_model_dir, monkeypatch):
    """A method no core file names: it asks for the target and the attributes (`supplied`), applies
    to unconditional models, does not couple its batch; the runner builds and runs it."""
    from audit.methods.base import Method
    from audit.registry import METHODS
    from audit.run.suite import run_suite

    class NudgeX(Method):
        name = "nudge_x"
        supplied = ("target", "attributes")
        couples_batch = False
        relative_cost = 1.0

        def __init__(self, target, attributes, step: float = 0.0):
            self.target, self.attributes, self.step = np.asarray(target), list(attributes), float(step)

        def on_x(self, x, batch):
            return x + self.step

        def config(self):
            return {"name": self.name, "target": self.target.tolist(), "attributes": self.attributes,
                    "step": self.step}

    monkeypatch.setitem(METHODS, "nudge_x", NudgeX)  # as register_method("nudge_x", NudgeX), undone after
    suite = load_suite(_suite(tmp_path, tiny_model_dir, labelers=["synthfaces-eval"],
                              methods=[{"name": "nudge_x", "params": {"step": 0.01}}],
                              settings=[{"attributes": ["skin_tone"], "target": [0.3, 0.7]}]))
    (cell,) = plan(suite)
    assert not cell.batch_coupled and cell.skip_reason is None
    frame = run_suite(suite, tmp_path / "out")
    assert list(frame["status"]) == ["done"]
    manifest = json.loads((tmp_path / "out" / "cells" / cell.cell_id / "manifest.json").read_text())
    assert manifest["method"] == {"name": "nudge_x", "target": [0.3, 0.7], "attributes": ["skin_tone"], "step": 0.01}
