"""Zoo models ship their `scale: auto` calibrations, as they ship probes: a suite on the zoo
starts calibrated, and records of other weights are never used."""

import json
import subprocess
import sys

import numpy as np
import pytest

from audit.methods.guidance import DEFAULT_STOP
from audit.registry import METHODS, effective_params, resolve
from audit.run import calibration
from audit.run.context import RunContext
from audit.run.probes import get_probes
from audit.spec import load_suite, plan
from audit.store import RunStore


@pytest.fixture
def zoo_weights(tmp_path, monkeypatch):
    """The zoo's calibration directory, in a temporary place."""
    from audit.zoo.source import ZooSource

    monkeypatch.setattr(ZooSource, "shipped_calibrations", lambda self, name: tmp_path / "shipped" / name)
    return tmp_path / "shipped"


def quickstart_cell(tmp_path):
    suite = load_suite("benchmarks/quickstart.yaml")
    ctx = RunContext(suite=suite, store=RunStore(tmp_path / "out"), log=lambda s: None)
    cell = next(c for c in plan(suite) if c.method.name == "distribution_guidance" and not c.model.prompts)
    return ctx, cell


def never_called(**kwargs):
    raise AssertionError("calibration generated images although a calibrated scale was shipped")


def test_shipped_record_is_used_and_copied_into_the_run(tmp_path, zoo_weights):
    ctx, cell = quickstart_cell(tmp_path)
    supplied = {"probes": get_probes(ctx, cell), "target": cell.setting.target_vector()}
    params = {**cell.method.params, "scale": "auto"}
    revision = ctx.adapter(cell).revision
    config = calibration.calibration_config(ctx, cell, never_called, supplied, params, n=128)
    # The run directory a maintainer calibrated in: one record of the current weights, one stale.
    run, current = tmp_path / "calibrated-run", {"scale": 2.5, "tried": []}
    (run / "calibration").mkdir(parents=True)
    (run / "calibration" / "synthfaces-ddpm-a.json").write_text(json.dumps({**current, "config": config}))
    stale = {**config, "revision": "step1-0000000000"}
    (run / "calibration" / "synthfaces-ddpm-b.json").write_text(json.dumps({**current, "scale": 9.0, "config": stale}))
    written = calibration.ship_calibrations(run, {"zoo:synthfaces-ddpm": revision})
    assert [p.parent.name for p in written] == ["synthfaces-ddpm"]
    assert written[0] == zoo_weights / "synthfaces-ddpm" / calibration.record_name(config)

    fresh = RunContext(suite=ctx.suite, store=RunStore(tmp_path / "fresh"), log=lambda s: None)
    assert calibration.calibrate(fresh, cell, never_called, supplied, params)["scale"] == 2.5
    copied = list((tmp_path / "fresh" / "calibration").glob("*.json"))
    assert len(copied) == 1 and json.loads(copied[0].read_text())["config"]["revision"] == revision


def test_records_of_other_weights_are_removed_when_shipping(tmp_path, zoo_weights):
    old = zoo_weights / "synthfaces-ddpm" / "distribution_guidance-0.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"scale": 1.0, "config": {"revision": "step1-0000000000"}}))
    (tmp_path / "run" / "calibration").mkdir(parents=True)
    assert calibration.ship_calibrations(tmp_path / "run", {"zoo:synthfaces-ddpm": "step2-1111111111"}) == []
    assert not old.exists()


def test_cli_ship_calibrations_needs_a_calibrated_run(tmp_path):
    done = subprocess.run([sys.executable, "-m", "audit.cli", "zoo", "ship-calibrations", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "calibration/" in done.stderr


def test_every_calibrated_quickstart_cell_has_a_shipped_record(tmp_path):
    """Otherwise a fresh quickstart calibrates at run time and misses its 10-minute bar."""
    suite = load_suite("benchmarks/quickstart.yaml")
    ctx = RunContext(suite=suite, store=RunStore(tmp_path / "out"), log=lambda s: None)
    missing = []
    for cell in plan(suite):
        if cell.skip_reason or cell.method.params.get("scale") != "auto":
            continue
        supplied = {"probes": get_probes(ctx, cell), "target": cell.setting.target_vector()}
        n = calibration.calibration_samples(len(supplied["target"]))
        factory = resolve(METHODS, cell.method.name, "method")
        config = calibration.calibration_config(ctx, cell, factory, supplied, dict(cell.method.params), n=n)
        if not any(calibration.shipped_calibration(cell.model.source, name).exists()
                   for name in calibration.record_names(config)):
            missing.append(cell.cell_id)
    assert not missing, f"run the quickstart, then `diffaudit zoo ship-calibrations runs/quickstart`: {missing}"


def test_a_changed_method_default_does_not_reuse_a_record(tmp_path):
    """Records are keyed by the method's effective params: defaults count as if written out."""
    ctx, cell = quickstart_cell(tmp_path)
    supplied = {"probes": get_probes(ctx, cell), "target": cell.setting.target_vector()}
    factory = resolve(METHODS, cell.method.name, "method")

    def key(method_factory, params):
        config = calibration.calibration_config(ctx, cell, method_factory, supplied, params, n=128)
        return calibration.record_name(config)

    def other_default(probes, target, scale=1.0, loss="chi2", path="h", start=0.0, stop=0.123, normalize=True,
                      grad_tau=8.0):
        raise AssertionError("never built")

    assert effective_params(factory, {"scale": "auto"})["stop"] == DEFAULT_STOP
    assert key(factory, {"scale": "auto"}) == key(factory, {"scale": "auto", "stop": DEFAULT_STOP})
    assert key(factory, {"scale": "auto"}) != key(other_default, {"scale": "auto"})
    assert key(factory, {"scale": "auto"}) != key(factory, {"scale": "auto", "stop": DEFAULT_STOP / 2})
    # Aiming at the target itself is what every record did before calibration corrected aims, so
    # it is left out of the key (those records' trials are still replayed); an aim of one's own counts.
    config = calibration.calibration_config(ctx, cell, factory, supplied, {"scale": "auto"}, n=128)
    assert "aim" not in config["params"] and "stop" in config["params"]
    assert key(factory, {"scale": "auto"}) != key(factory, {"scale": "auto", "aim": [0.4, 0.6]})
    # An option added later (ADDED_OPTIONS) counts only when set away from its old-behaviour default.
    assert "push" not in config["params"]
    assert key(factory, {"scale": "auto"}) == key(factory, {"scale": "auto", "push": "all"})
    assert key(factory, {"scale": "auto"}) != key(factory, {"scale": "auto", "push": "surplus"})
    assert "auto_tolerance" not in config["params"]
    assert key(factory, {"scale": "auto"}) == key(factory, {"scale": "auto", "auto_tolerance": 0})
    assert key(factory, {"scale": "auto"}) != key(factory, {"scale": "auto", "auto_tolerance": 0.25})


def walk_record(config: dict, fds: dict[float, float], n: int = 128) -> dict:
    """A record of a two-class calibration whose trials measured `fds` (scale -> FD) on n seeds,
    with per-seed labels spread evenly, so that a trial's first batches read about the same."""
    def trial(scale: float, fd: float) -> dict:
        first = round(n * (0.5 + fd / 2 ** 0.5))
        labels = [0 if (i + 1) * first // n > i * first // n else 1 for i in range(n)]
        p_hat = [first / n, 1 - first / n]
        return {"scale": scale, "n": n, "fd": float(np.linalg.norm(np.subtract(p_hat, 0.5))), "p_hat": p_hat,
                "labels": labels}
    return {"scale": 1.0, "tried": [trial(s, fd) for s, fd in fds.items()], "config": config}


def test_a_new_calibration_rule_reuses_an_earlier_records_trials(tmp_path, zoo_weights):
    """Trials are deterministic and records keep their per-seed labels: a changed search replays
    the earlier rule's trials, their first batches included, and generates only what they lack
    (here 32, past the old record's top, where FD still fell)."""
    ctx, cell = quickstart_cell(tmp_path)
    supplied = {"probes": get_probes(ctx, cell), "target": cell.setting.target_vector()}
    params = {**cell.method.params, "scale": "auto"}
    config = calibration.calibration_config(ctx, cell, never_called, supplied, params, n=128)
    old_rule = {**config, "rule": "images, interpolated"}
    (tmp_path / "out" / "calibration").mkdir(parents=True)
    early = {1.0: 0.30, 1.4: 0.20, 2.0: 0.08, 2.8: 0.02, 4.0: 0.25, 8.0: 0.40}  # the optimum near 2.8
    (tmp_path / "out" / "calibration" / "synthfaces-ddpm-old.json").write_text(
        json.dumps(walk_record(old_rule, early)))
    scale = calibration.calibrate(ctx, cell, never_called, supplied, params)["scale"]
    record = json.loads((tmp_path / "out" / "calibration" / f"synthfaces-ddpm-{calibration.record_name(config)}")
                        .read_text())
    assert record["config"]["rule"] == calibration.RULE and scale == record["scale"] and record["images"] == 0
    # 1.0 and 8.0 were read on their replayed trials' first batch only: no coarse trial of its own
    assert [t["scale"] for t in record["tried"]] == [1.4, 2.0, 2.8, 4.0] and record["coarse"] == []
    assert 2.0 < scale < 4.0

    # Shipped with the zoo, a record whose FD was still falling at 16 is extended upward.
    (tmp_path / "out" / "calibration").rename(tmp_path / "first-run")
    still_falling = {s: 0.5 - 0.03 * i for i, s in enumerate(calibration.GRID) if s <= 16}
    (zoo_weights / "synthfaces-ddpm").mkdir(parents=True)
    (zoo_weights / "synthfaces-ddpm" / "old.json").write_text(json.dumps(walk_record(old_rule, still_falling)))
    with pytest.raises(AssertionError, match="generated images"):
        calibration.calibrate(ctx, cell, never_called, supplied, params)
    # Records of the earlier rule are never shipped and are removed from the zoo.
    assert calibration.ship_calibrations(tmp_path / "first-run", {}) == []
    calibration.ship_calibrations(tmp_path / "first-run", {"zoo:synthfaces-ddpm": config["revision"]})
    assert not (zoo_weights / "synthfaces-ddpm" / "old.json").exists()


def test_trials_of_records_without_labels_stand_only_for_themselves(tmp_path, zoo_weights):
    """A record made before records kept per-seed labels cannot tell a trial's first batch: that
    is generated, the full trial is replayed."""
    ctx, cell = quickstart_cell(tmp_path)
    supplied = {"probes": get_probes(ctx, cell), "target": cell.setting.target_vector()}
    params = {**cell.method.params, "scale": "auto"}
    config = calibration.calibration_config(ctx, cell, never_called, supplied, params, n=128)
    old = walk_record({**config, "rule": "images, interpolated"}, {4.0: 0.1, 8.0: 0.2})
    for trial in old["tried"]:
        del trial["labels"]
    (tmp_path / "out" / "calibration").mkdir(parents=True)
    (tmp_path / "out" / "calibration" / "synthfaces-ddpm-old.json").write_text(json.dumps(old))
    found = calibration.earlier_trials(config, [tmp_path / "out" / "calibration"])
    assert set(found) == {calibration.measurement_key(s, None, 128) for s in (4.0, 8.0)}
    with pytest.raises(AssertionError, match="generated images"):  # the coarse pass's first batch at 4
        calibration.calibrate(ctx, cell, never_called, supplied, params)


def test_auto_tolerance_picks_a_smaller_scale_from_the_same_trials(tmp_path, zoo_weights):
    """`auto_tolerance` changes only which tried scale is chosen: its record replays the trials of
    the plain record of the same cell (no images generated) and chooses the smallest scale whose
    interpolated FD is within that many noise units of the best."""
    ctx, cell = quickstart_cell(tmp_path)
    supplied = {"probes": get_probes(ctx, cell), "target": cell.setting.target_vector()}
    params = {**cell.method.params, "scale": "auto"}
    plain = calibration.calibration_config(ctx, cell, never_called, supplied, params, n=128)
    walked = {1.0: 0.30, 1.4: 0.20, 2.0: 0.08, 2.8: 0.02, 4.0: 0.25, 8.0: 0.40}  # the optimum near 2.8
    (tmp_path / "out" / "calibration").mkdir(parents=True)
    (tmp_path / "out" / "calibration" / "synthfaces-ddpm-plain.json").write_text(
        json.dumps(walk_record(plain, walked)))
    tolerant = {**params, "auto_tolerance": 0.5}
    scale = calibration.calibrate(ctx, cell, never_called, supplied, tolerant)["scale"]
    config = calibration.calibration_config(ctx, cell, never_called, supplied, tolerant, n=128)
    record = json.loads((tmp_path / "out" / "calibration" / f"synthfaces-ddpm-{calibration.record_name(config)}")
                        .read_text())
    assert config["params"]["auto_tolerance"] == 0.5 and config["rule"] == plain["rule"]
    assert [t["scale"] for t in record["tried"]] == [1.4, 2.0, 2.8, 4.0] and record["aimed"] == []
    assert record["images"] == 0
    noise = record["noise"]  # 0.0625: two classes, 128 seeds
    assert scale == calibration.smallest_scale_within(record["tried"], supplied["target"], 0.5 * noise)
    assert 2.0 < scale < calibration.interpolated_scale(record["tried"], supplied["target"]) <= 2.8


def test_smallest_scale_within_the_tolerance():
    def tried(fds: dict) -> list[dict]:
        return [{"scale": s, "p_hat": [0.5 + fd / 2 ** 0.5, 0.5 - fd / 2 ** 0.5]} for s, fd in fds.items()]

    # the joint walk of `push: assign` as FDs on a binary target: 16 was the best by 0.002
    walk = tried({1.0: 0.319, 2.0: 0.171, 4.0: 0.079, 8.0: 0.063, 16.0: 0.061})
    assert calibration.smallest_scale_within(walk, [0.5, 0.5], 0.0) == 16.0
    assert calibration.smallest_scale_within(walk, [0.5, 0.5], 0.0025) == 8.0  # 0.063 <= 0.061 + 0.0025
    assert calibration.smallest_scale_within(walk, [0.5, 0.5], 0.0012) == pytest.approx(8.0 * 2 ** 0.5, rel=1e-3)
    chosen = calibration.smallest_scale_within(walk, [0.5, 0.5], 0.054 / 4)
    assert 4.0 < chosen < 8.0
    # the interpolated FD at the chosen scale is within the bound, one grid point lower is not
    fd = lambda s: np.interp(np.log(s), np.log([4.0, 8.0]), [0.079, 0.063])  # noqa: E731
    assert fd(chosen) <= 0.061 + 0.054 / 4 + 1e-9 < fd(chosen / 2 ** (1 / 8))
    assert calibration.smallest_scale_within(walk, [0.5, 0.5], 1.0) == 1.0  # everything is within a huge slack
    assert calibration.smallest_scale_within(list(reversed(walk)), [0.5, 0.5], 0.0) == 16.0
