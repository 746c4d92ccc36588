"""kill -9 and Ctrl-C at every stage after generation (probe training, calibration, labeling, FID,
report rendering): real `python -m audit.cli run` processes stopped by the DIFFAUDIT_KILL_AT hook
(audit/stages.py) at a named point, then run again to the end. Generation itself is killed in
test_kill_and_ray.py."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import yaml

VOLATILE = ["seconds", "images_per_s"]  # the only columns of results.csv that differ between runs


def suite_file(tmp_path, model_dir, **changes):
    data = {
        "name": "stages",
        "models": [{"name": "tiny", "source": str(model_dir), "steps": 3}],
        "methods": [{"name": "none"}, {"name": "distribution_guidance", "params": {"scale": 1.0}}],
        "settings": [{"attributes": ["skin_tone", "eyeglasses"], "target": "uniform"}],  # two probes
        "samples": 8, "batch_size": 4, "seed": 0,
        "labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo",
        "probe": {"n": 16, "batch_size": 8}, "metrics": ["fairness", "fid"],
        "fid": {"extractor": "synthfaces", "reference": "synthfaces:biased", "n": 40},
    }
    data.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(command, stage=None, interrupt=False):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DIFFAUDIT_KILL_AT", None)
    if stage:
        env["DIFFAUDIT_KILL_AT"] = stage
        env["DIFFAUDIT_KILL_SIGNAL"] = "INT" if interrupt else "KILL"
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("interrupt", [False, True], ids=["kill-9", "ctrl-c"])
def test_stopped_at_every_stage_the_rerun_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, interrupt):
    path = suite_file(tmp_path, tiny_model_dir)
    command = [sys.executable, "-m", "audit.cli", "run", str(path), "--threads", "1", "-o"]
    reference = run([*command, str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "stopped"
    for stage in ("probes", "labels", "fid", "report"):
        stopped = run([*command, str(out)], stage=stage, interrupt=interrupt)
        expected = -signal.SIGKILL if not interrupt else None
        assert stopped.returncode != 0 and (expected is None or stopped.returncode == expected), \
            f"{stage}: {stopped.returncode} {stopped.stderr[-2000:]}"
        if stage == "probes":  # stopped after the first of the two probes was saved
            assert len(list((out / "probes").rglob("probe.json"))) == 1
    finished = run([*command, str(out)])
    assert finished.returncode == 0, finished.stderr[-2000:]
    resumed = pd.read_csv(out / "results.csv", dtype=str).drop(columns=VOLATILE)
    expected = pd.read_csv(tmp_path / "reference" / "results.csv", dtype=str).drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(resumed, expected)
    assert (out / "report" / "index.html").is_file()
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))


CALIBRATE = textwrap.dedent("""
    import json, sys
    import torch
    from audit.run.calibration import calibrate
    from audit.registry import METHODS, resolve
    from audit.run.context import RunContext
    from audit.run.probes import get_probes
    from audit.spec import load_suite, plan
    from audit.store import RunStore

    torch.set_num_threads(1)  # also faster than 2 on a busy machine
    suite = load_suite(sys.argv[1])
    ctx = RunContext(suite=suite, store=RunStore(sys.argv[2]), log=print)
    (cell,) = plan(suite)
    factory = resolve(METHODS, cell.method.name, "method")
    chosen = calibrate(ctx, cell, factory, {"probes": get_probes(ctx, cell), "target": cell.setting.target_vector()},
                       dict(cell.method.params), n=8)
    print("chosen", json.dumps(chosen))
""")


def test_a_killed_calibration_resumes_from_its_finished_trials_and_chooses_the_same_scale(tmp_path, tiny_model_dir):
    path = suite_file(tmp_path, tiny_model_dir, methods=[{"name": "distribution_guidance",
                                                           "params": {"scale": "auto"}}],
                      settings=[{"attributes": ["skin_tone"], "target": "uniform"}], metrics=["fairness"],
                      batch_size=8)
    command = [sys.executable, "-c", CALIBRATE, str(path)]
    reference = run([*command, str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr[-2000:]
    (record,) = (tmp_path / "reference" / "calibration").glob("*.json")
    expected = json.loads(record.read_text())
    measured = len(expected["tried"]) + len(expected["aimed"])
    assert measured >= 3

    out = tmp_path / "killed"
    killed = run([*command, str(out)], stage="calibration-trial:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not list((out / "calibration").glob("*.json"))  # no record: the search had not ended
    (partial,) = (out / "calibration" / "partial").glob("*.json")
    assert len(json.loads(partial.read_text())["measurements"]) == 2

    resumed = run([*command, str(out)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("kept from an interrupted calibration") == 2
    (record,) = (out / "calibration").glob("*.json")
    got = json.loads(record.read_text())
    assert (got["scale"], got["aim"]) == (expected["scale"], expected["aim"])
    assert got["tried"] == expected["tried"] and got["aimed"] == expected["aimed"]
    assert resumed.stdout.splitlines()[-1] == reference.stdout.splitlines()[-1]
    assert not list((out / "calibration" / "partial").glob("*.json"))  # cleaned up with the record
