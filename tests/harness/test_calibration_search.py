"""The calibration's coarse-to-fine search chooses what trying every grid scale on every seed
would, at a fraction of the images, and tells the log how far it is."""

import json
import re

import numpy as np
import pytest

from audit.run import calibration
from audit.run.calibration import GRID, interpolated_scale, search, smallest_scale_within

NOISE = 0.5 ** 0.5 / 8  # FD's sampling noise at a two-class uniform target on 64 seeds


def shares(optimum: float, steepness: float = 1.0):
    """Class shares of a binary attribute that guidance at `scale` moves from 0.9/0.1 past the
    uniform target, crossing it at `optimum` (shares linear in log(scale) near the crossing, as
    measured walks were): FD to [0.5, 0.5] is unimodal with its minimum at `optimum`."""
    def at(scale: float) -> list[float]:
        p = 0.5 - 0.4 * np.tanh(steepness * np.log(scale / optimum))
        return [float(p), float(1 - p)]
    return at


def measured(curve, target, coarse_error=None):
    """A trial function over `curve` that records what it was asked; coarse trials (fewer seeds)
    read off by `coarse_error(scale)`, as a first batch's sampling noise would."""
    asked = []

    def trial(scale: float, count: int) -> dict:
        asked.append((scale, count))
        p = np.asarray(curve(scale))
        if count < 128 and coarse_error is not None:
            p = np.clip(p + coarse_error(scale) * np.array([1, -1]), 0, 1)
        return {"scale": scale, "n": count, "p_hat": p.tolist(), "fd": float(np.linalg.norm(p - target))}
    return trial, asked


def exhaustive(curve, target) -> list[dict]:
    return [{"scale": s, "n": 128, "p_hat": curve(s), "fd": float(np.linalg.norm(np.asarray(curve(s)) - target))}
            for s in GRID]


@pytest.mark.parametrize("optimum", [0.2, 0.3, 0.6, 1.2, 2.4, 3.3, 4.0, 6.5, 9.0, 13.0, 27.0, 50.0, 90.0])
@pytest.mark.parametrize("steepness", [0.5, 2.0])
def test_the_search_chooses_the_exhaustive_scale(optimum, steepness):
    target = np.array([0.5, 0.5])
    curve = shares(optimum, steepness)
    trial, asked = measured(curve, target)
    tried = search(trial, coarse=64, full=128, noise=NOISE)
    assert interpolated_scale(tried, target) == interpolated_scale(exhaustive(curve, target), target)
    assert [t["scale"] for t in tried] == sorted({s for s, c in asked if c == 128})
    # cheaper than trying all 17 scales on every seed, by half where the optimum lies in the walk's
    # reach (a steep curve flat below a far optimum ends the coarse walk early: the full walk goes on)
    images = sum(count for _, count in asked)  # a completed coarse trial counted twice: an upper bound
    assert images < 0.7 * 17 * 128 and (images <= 17 * 128 / 2 or optimum > 12)


@pytest.mark.parametrize("seed", range(6))
def test_a_misleading_coarse_pass_is_corrected_on_every_seed(seed):
    """Coarse trials off by up to 0.2 in a share (far beyond a first batch's noise) may bracket
    the wrong place; the walk on full trials still ends at the exhaustive choice."""
    rng = np.random.default_rng(seed)
    errors = {s: rng.uniform(-0.2, 0.2) for s in GRID}
    target = np.array([0.5, 0.5])
    curve = shares(float(rng.choice([1.5, 5.0, 20.0])))
    trial, _ = measured(curve, target, coarse_error=errors.get)
    chosen = interpolated_scale(search(trial, 64, 128, NOISE), target)
    assert chosen == interpolated_scale(exhaustive(curve, target), target)


@pytest.mark.parametrize("slack", [0.02, 0.1, 0.3])
def test_with_a_tolerance_the_search_brackets_the_smallest_scale_within_it(slack):
    target = np.array([0.5, 0.5])
    curve = shares(6.0, 0.7)
    trial, _ = measured(curve, target)
    tried = search(trial, 64, 128, NOISE, slack=slack)
    assert smallest_scale_within(tried, target, slack) == smallest_scale_within(exhaustive(curve, target), target,
                                                                                slack)


def test_ties_go_to_the_smaller_scale_as_in_the_exhaustive_choice():
    """A model guidance cannot move (every scale reads the same): the smallest scale, as
    interpolated_scale picks the first of tied trials."""
    target = np.array([0.5, 0.5])
    flat = lambda scale: [0.7, 0.3]  # noqa: E731
    trial, _ = measured(flat, target)
    assert interpolated_scale(search(trial, 64, 128, NOISE), target) == GRID[0]


def test_progress_lines_count_trials_and_give_an_eta(tmp_path, tiny_model_dir):
    """Every generated batch logs the trial in hand, trials done, an estimate of those left and
    an ETA; coarse trials stop after their first batches and the full ones keep them."""
    from audit.registry import METHODS, resolve
    from audit.run.context import RunContext
    from audit.run.probes import get_probes
    from audit.spec import Suite, plan
    from audit.store import RunStore

    suite = Suite.model_validate({
        "name": "calibration-progress", "models": [{"name": "tiny", "source": str(tiny_model_dir), "steps": 2}],
        "methods": [{"name": "distribution_guidance", "params": {"scale": "auto"}}],
        "settings": [{"attributes": ["skin_tone"], "target": "uniform"}], "samples": 4, "batch_size": 16,
        "labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo", "probe": {"n": 32, "batch_size": 16},
        "metrics": ["fairness"]})
    lines = []
    ctx = RunContext(suite=suite, store=RunStore(tmp_path / "out"), log=lines.append)
    (cell,) = plan(suite)
    probes = get_probes(ctx, cell)
    lines.clear()
    chosen = calibration.calibrate(ctx, cell, resolve(METHODS, cell.method.name, "method"),
                                   {"probes": probes, "target": cell.setting.target_vector()},
                                   dict(cell.method.params), n=128)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "calibration").glob("*.json")]
    assert chosen["scale"] == record["scale"]
    progress = [ln for ln in lines if " generated; " in ln]
    line = re.compile(r"scale ([\d.]+)( aimed)? on (\d+) of (\d+) seeds: (\d+) generated; (\d+) trials done, "
                      r"about (\d+) left, ETA (\d+):(\d\d)$")
    parsed = [line.search(ln) for ln in progress]
    assert all(parsed), progress[:3]
    batches = record["images"] // 16
    assert len(progress) == batches  # one line per generated batch
    done = [int(m[6]) for m in parsed]
    assert done == sorted(done) and done[0] == 0
    assert all(int(m[5]) % 16 == 0 and int(m[5]) <= int(m[3]) <= int(m[4]) for m in parsed)
    # coarse trials are 64 seeds (4 batches of 16); the full ones continue from them
    coarse = {float(m[1]) for m in parsed if m[3] == "64"}
    assert coarse and all(t["n"] == 64 and t["of"] == 128 for t in record["coarse"])
    continued = [m for m in parsed if m[3] == "128" and float(m[1]) in coarse and not m[2]]
    assert all(int(m[5]) > 64 for m in continued)  # their first 64 seeds were not generated again
    walk = 128 * len(record["tried"]) + 64 * len(record["coarse"])  # nothing generated twice
    assert record["images"] == walk + sum(t["n"] for t in record["aimed"])
    assert f"after {record['images']} images in " in lines[-1]
