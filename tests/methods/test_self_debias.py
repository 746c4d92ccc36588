"""Unsupervised h-space balancing: clusters of unguided h, heads that read them, guidance that
moves a batch's cluster shares, and the description of what the clusters capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.methods.self_debias import SelfDebias, cluster
from audit.registry import check_params
from audit.run.build import UnguidedSamples


def test_kmeans_finds_planted_clusters_largest_first():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 50)) * 6
    truth = np.repeat([0, 1, 2], [30, 20, 10])
    h = torch.from_numpy(centres[truth] + rng.normal(size=(60, 50)))
    labels = cluster(h, 3, seed=0)
    assert (labels == truth).all()


def test_clusters_are_fitted_once_described_by_the_evaluation_labelers_and_cached(unguided, monkeypatch):
    method = SelfDebias(target=[0.5, 0.5], unguided=unguided, n=48)
    fitted = method.clusters
    description = fitted["description"]
    assert sum(description["sizes"]) == 48 and description["sizes"][0] >= description["sizes"][1]
    shares = description["labelers"]["brightness-test"]["brightness"]
    assert set(shares) == {"cluster 0", "cluster 1"}
    assert all(abs(sum(s.values()) - 1) < 1e-6 for s in shares.values())
    assert method.config()["clusters"] == description
    probe = fitted["probe"]
    assert probe.classes == ["cluster 0", "cluster 1"] and probe.meta["label_counts"] == description["sizes"]

    monkeypatch.setattr(UnguidedSamples, "collect", lambda *a, **k: pytest.fail("sampled again"))
    again = SelfDebias(target=[0.5, 0.5], unguided=unguided, n=48).clusters
    assert again["description"] == description
    assert torch.equal(again["probe"].weight, probe.weight)


def test_each_guided_step_moves_the_cluster_shares_toward_the_aim(unguided):
    """The cluster heads read h; an edit computed on real h at a real step moves the batch's
    predicted cluster shares toward the given ones (either way round)."""
    seeds = list(range(16))
    moved = {}
    for shares in ([0.9, 0.1], [0.1, 0.9]):
        method = SelfDebias(target=[0.5, 0.5], unguided=unguided, n=48, shares=shares, scale=0.5)
        probe = method.probes[0]
        with unguided.adapter.hspace().recording() as recorded:
            unguided.adapter.generate(seeds, steps=5)
        t = probe.timesteps[1]
        h = recorded[1].reshape(len(seeds), -1)

        class Batch:
            progress, state = 0.2, {}

        Batch.t = t
        before = probe.probs(h, t).mean(0)
        after = probe.probs(method.on_h(h, Batch), t).mean(0)
        moved[shares[0]] = float(after[0] - before[0])
    assert moved[0.9] > 0 > moved[0.1], moved


def test_guided_sampling_runs_in_the_window_and_records_the_cluster_shares(unguided):
    """A random tiny UNet carries no semantics from step to step, so whether the final samples
    move is measured on the zoo (docs/methods.md); here: the guided steps are those of the
    window, each records the batch's predicted cluster shares, and the images change."""
    seeds = list(range(100, 108))
    plain = unguided.adapter.generate(seeds, steps=5).images
    method = SelfDebias(target=[0.5, 0.5], unguided=unguided, n=48, shares=[0.9, 0.1])
    out = unguided.adapter.generate(seeds, steps=5, method=method)
    assert len(out.stats["loss"]) == 4 and len(out.stats["p_hat_clusters"]) == 2  # stop 0.8: 4 of 5 steps
    assert torch.isfinite(out.images).all() and not torch.equal(plain, out.images)


@pytest.mark.parametrize(("params", "message"), [
    ({"k": 1}, "k should be greater than or equal to 2"),
    ({"k": 3, "shares": [0.5, 0.5]}, "shares must be 3 non-negative proportions"),
    ({"shares": [0.7, 0.7]}, "shares must be 2 non-negative proportions summing to 1"),
    ({"k": 8, "n": 16}, "n must be at least 4 samples per cluster (32 for k=8), got 16"),
    ({"start": 0.6, "stop": 0.5}, "start must be below stop"),
    ({"scale": "auto"}, "scale should be a valid number"),
    ({"labeler": "x"}, "unknown params 'labeler'"),
])
def test_bad_params_are_one_line_errors_at_suite_load(params, message):
    with pytest.raises(ValueError) as error:
        check_params(SelfDebias, params, "params")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_through_the_runner_the_manifest_says_what_the_clusters_capture(tmp_path, tiny_model_dir):
    """The runner supplies the unguided samples; the clusters are fitted once for both settings
    with two classes, described by the suite's evaluation labeler, and recorded in the manifest."""
    import json

    import yaml

    from audit.run.suite import run_suite
    from audit.spec import load_suite

    suite = {"name": "tiny", "models": [{"name": "tiny", "source": str(tiny_model_dir), "steps": 3}],
             "methods": [{"name": "self_debias", "params": {"n": 16}}],
             "settings": [{"attributes": ["skin_tone"], "target": "uniform"},
                          {"attributes": ["eyeglasses"], "target": "uniform"}],
             "samples": 6, "batch_size": 3, "labelers": ["synthfaces-eval"], "probe": {"n": 16, "batch_size": 8},
             "metrics": ["fairness"]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    frame = run_suite(load_suite(path), tmp_path / "out")
    assert set(frame["status"]) == {"done"}
    fitted = list((tmp_path / "out" / "unguided").rglob("clusters.json"))
    assert len(fitted) == 1  # k=2 for both settings: one clustering
    # ... and one set of images: the second setting's batches are copies of the first's.
    first, second = (sorted((tmp_path / "out" / "cells" / c / "images").iterdir()) for c in frame["cell_id"])
    assert len(first) == 6 and [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    markers = [json.loads(p.read_text()) for c in frame["cell_id"]
               for p in (tmp_path / "out" / "cells" / c / "batches").glob("*.json")]
    assert sum("copied_from" in m for m in markers) == 2  # 6 samples in batches of 3
    for cell in (tmp_path / "out" / "cells").iterdir():
        clusters = json.loads((cell / "manifest.json").read_text())["method"]["clusters"]
        assert sum(clusters["sizes"]) == 16
        by_cluster = clusters["labelers"]["synthfaces-eval"]["skin_tone"]
        assert set(by_cluster) == {"cluster 0", "cluster 1"} and set(by_cluster["cluster 0"]) == {"light", "dark"}

    # The auditor's report shows, on each cell's page, what the clusters capture.
    from audit.report import write_report

    index = write_report(tmp_path / "out")
    pages = sorted((index.parent / "cells").glob("*.html"))
    assert len(pages) == 2
    for page in pages:
        html = page.read_text()
        section = html[html.index('<section id="clusters">'):]
        section = section[:section.index("</section>")]
        assert "What the method balanced" in section and "cluster 0: " in section and "cluster 1: " in section
        assert "<tr><td>skin_tone" in section and "light " in section and "%" in section
        assert "The clusters differ most in" in section
        assert "(audited)" in section  # the cell's own attribute is marked


def test_settings_with_as_many_classes_share_images_unless_k_is_given():
    """The clusters have no names: only the setting's class count (the default k) reaches the
    images, so skin tone uniform and 0.1/0.9 make the same images and a 4-class setting does not;
    with k set, no setting does."""
    from audit.spec import Suite, plan

    settings = [{"attributes": ["skin_tone"], "target": "uniform"},
                {"attributes": ["skin_tone"], "target": {"light": 0.1, "dark": 0.9}},
                {"attributes": ["skin_tone", "eyeglasses"], "target": "uniform"}]

    def image_keys(params):
        suite = Suite.model_validate({"name": "s", "models": [{"name": "m", "source": "zoo:synthfaces-ddpm"}],
                                      "methods": [{"name": "self_debias", "params": params}],
                                      "settings": settings, "samples": 8, "labelers": ["synthfaces-eval"]})
        cells = plan(suite)
        assert all(c.shares_images for c in cells)
        return [c.image_key for c in cells]

    uniform, skewed, joint = image_keys({})
    assert uniform == skewed and joint != uniform
    assert len(set(image_keys({"k": 3}))) == 1
