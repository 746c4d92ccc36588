"""benchmarks/perf.py --quick end to end: every section runs and the JSON has the keys the
docs' performance page and its bars read (the figures themselves are the full run's, not a test's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_perf_quick_writes_every_section(tmp_path):
    out = tmp_path / "perf.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # this checkout's audit
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "quick" and result["machine"]["torch_threads"] == 1

    guidance = result["guidance_overhead"]
    methods = {"none", "distribution_guidance", "sample_guidance", "distribution_guidance_x", "universal_guidance",
               "self_debias"}
    assert set(guidance["ratio_to_none"]) == methods and guidance["ratio_to_none"]["none"] == 1.0
    assert all(len(t) == 1 and t[0] > 0 for t in guidance["seconds"].values())
    # a UNet backward per step: universal guidance must cost more than the h-path edit
    assert guidance["ratio_to_none"]["universal_guidance"] > guidance["ratio_to_none"]["distribution_guidance"]

    text = result["text_method_overhead"]
    assert set(text["ratio_to_none"]) == {"none", "prompt_projection", "semantic_guidance"}
    assert all(len(t) == 1 and t[0] > 0 for t in text["seconds"].values())
    # (semantic guidance's one extra UNet evaluation per edited step is counted, not timed, in
    # tests/methods/test_semantic_guidance.py: at 4 images and 3 steps it is within timing noise)

    loop = result["loop_overhead"]
    assert set(loop["seconds"]) == {"generate", "bare_unet"} and loop["ratio"] > 0 and "passes" in loop

    metrics = result["metrics"]
    assert metrics["resamples"] == 1000 and metrics["attributes"] == ["skin_tone", "eyeglasses", "hair_color"]
    assert len(metrics["seconds_per_setting"]) == 4 and metrics["seconds_total"] > 0

    scaling = result["scaling"]
    cells = scaling["cells"]
    assert [c["samples"] for c in cells] == [8, 32]
    assert all(c["status"] == ["done"] and c["images_on_disk"] == c["samples"] for c in cells)
    assert all(c["peak_rss_mb"] >= c["rss_before_mb"] > 0 for c in cells)
    for key in ("time_ratio", "memory_ratio", "marginal_seconds_per_1k", "passes"):
        assert key in scaling

    calibration = result["calibration"]  # one cell calibrated from nothing, then its own images
    assert calibration["calibration_images"] > 0 and calibration["generated_images"] == 16
    assert calibration["calibration_seconds"] > 0 and calibration["generation_seconds"] > 0
    assert calibration["trials"]["full"] and calibration["progress_lines"] > 0 and "passes" in calibration

    sd = result["sd15"]  # the tiny stand-in of the GPU path
    assert set(sd["images_per_s"]) == {"none", "distribution_guidance"} and sd["device"] == "cpu"


def test_transformer_speed_tiny_runs_both_families(tmp_path):
    """The GPU benchmark's code path at test size on the CPU: the adapter and the family's own
    pipeline make the same images from the same latents, and every ratio is written."""
    out = tmp_path / "ts.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "transformer_speed.py"), "--size", "tiny",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["families"]) == {"sd3", "flux"}
    for family in result["families"].values():
        assert family["max_pixel_difference"] < 1e-5
        assert set(family["images_per_s"]) == {"pipeline", "adapter", "distribution_guidance"}
        assert family["adapter_vs_pipeline"] > 0 and family["guided_vs_none"] > 0 and family["h_dim"] > 0
