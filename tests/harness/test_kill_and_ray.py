"""Crash safety (SIGKILL at random moments) and the Ray executor, on the tiny model."""

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest
import yaml

from audit.run.suite import run_suite
from audit.spec import load_suite

VOLATILE = ["seconds", "images_per_s"]


def suite_file(tmp_path, model_dir):
    data = {
        "name": "killme",
        "models": [{"name": "tiny", "source": str(model_dir), "steps": 4}],
        "methods": [{"name": "none"}, {"name": "distribution_guidance", "params": {"scale": 1.0}}],
        "settings": [{"attributes": ["skin_tone"], "target": "uniform"}],
        "samples": 40, "batch_size": 4, "seed": 0,
        "labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo",
        "probe": {"n": 16, "batch_size": 8}, "metrics": ["fairness", "fid"],
        "fid": {"extractor": "synthfaces", "reference": "synthfaces:biased", "n": 40},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def generated_batches(out):
    log = out / "events.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(" ".join(line.split()[2:5]) for line in lines if " generated " in line)


def test_sigkill_three_times_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    path = suite_file(tmp_path, tiny_model_dir)
    out = tmp_path / "killed"
    # The reference is the same command, uninterrupted: guided cells depend on torch's thread
    # count at the last bit, so both runs use the same one.
    command = [sys.executable, "-m", "audit.cli", "run", str(path), "--threads", "1", "-o"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = subprocess.run([*command, str(tmp_path / "reference")], env=env, capture_output=True, text=True,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    command = [*command, str(out)]
    rng = random.Random(7)
    kills = 0
    while kills < 3:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = sum(generated_batches(out).values())
        deadline = time.time() + 120
        # Kill at a random moment after the run has made some progress in this attempt.
        wanted = before + rng.randint(1, 3)
        while time.time() < deadline and process.poll() is None and sum(generated_batches(out).values()) < wanted:
            time.sleep(0.05)
        time.sleep(rng.random() * 0.3)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills == 3, "the run finished before it could be killed three times"
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    counts = generated_batches(out)
    assert counts and max(counts.values()) == 1, "a finished batch was generated twice"
    assert sum(counts.values()) == 2 * 40 // 4
    resumed = pd.read_csv(out / "results.csv").drop(columns=VOLATILE)
    expected = pd.read_csv(tmp_path / "reference" / "results.csv").drop(columns=VOLATILE)
    assert len(resumed) == 2
    pd.testing.assert_frame_equal(resumed, expected)
    for leftover in out.rglob("*.tmp"):
        pytest.fail(f"temporary file left behind: {leftover}")


def test_ray_executor_matches_local(tmp_path, tiny_model_dir):
    ray = pytest.importorskip("ray")
    path = suite_file(tmp_path, tiny_model_dir)
    suite = load_suite(path)
    local = run_suite(suite, tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_suite(suite, tmp_path / "ray", executor="ray")
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(local.drop(columns=VOLATILE), remote.drop(columns=VOLATILE))
    assert (tmp_path / "ray" / "index.sqlite").exists()
