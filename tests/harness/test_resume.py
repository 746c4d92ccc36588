"""Edits and faults that must never give a silently wrong number, on tiny real models: a cell's
`samples` grown or shrunk, a resume with another batch size, CUDA out-of-memory, two processes
on one output directory, torn probes, truncated images."""

import json
import os
import re
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.probes.probe import Probe, ProbeError
from audit.run.suite import run_suite
from audit.spec import SuiteError, load_suite

VOLATILE = ["seconds", "images_per_s"]


SYNTHFACES_FID_16 = {"extractor": "synthfaces", "reference": "synthfaces:biased", "n": 16}

def suite_file(tmp_path, model_dir, name="suite", **changes):
    data = {
        "name": "resume",
        "models": [{"name": "tiny", "source": str(model_dir), "steps": 2}],
        "methods": [{"name": "none"}],
        "settings": [{"attributes": ["skin_tone"], "target": [0.3, 0.7]}],
        "samples": 8, "batch_size": 4, "seed": 3,
        "labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo",
        "probe": {"n": 16, "batch_size": 8}, "metrics": ["fairness"],
    }
    data.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def make_suite(tmp_path, model_dir, name="suite", **changes):
    return load_suite(suite_file(tmp_path, model_dir, name, **changes))


def snapshot(out):
    """What must equal a fresh run's: results.csv without time columns, and per cell the images it
    was measured on (seed, prompt, PNG bytes)."""
    frame = pd.read_csv(out / "results.csv").drop(columns=VOLATILE)
    images = {}
    for cell in frame["cell_id"]:
        samples = pd.read_parquet(out / "cells" / cell / "samples.parquet")
        images[cell] = [(int(s), p, (out / "cells" / cell / "images" / f"{s:08d}.png").read_bytes())
                        for s, p in zip(samples["seed"], samples["prompt"], strict=True)]
    return frame, images


def assert_same(actual, expected):
    pd.testing.assert_frame_equal(actual[0], expected[0])
    assert actual[1].keys() == expected[1].keys()
    for cell, images in expected[1].items():
        assert [(s, p) for s, p, _ in actual[1][cell]] == [(s, p) for s, p, _ in images], cell
        assert [b for _, _, b in actual[1][cell]] == [b for _, _, b in images], cell


def events(out, kind="generated"):
    log = out / "events.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.split()[1] == kind]


def generated_seeds(lines):
    """The seeds of 'generated CELL batch N (K images, seeds A-B, ...)' events ('seeds 3,7,8,' when
    not consecutive)."""
    seeds = []
    for line in lines:
        span = re.search(r"seeds ([0-9,-]+),", line).group(1)
        if "-" in span:
            first, last = map(int, span.split("-"))
            seeds += list(range(first, last + 1))
        else:
            seeds += [int(s) for s in span.split(",")]
    return seeds


def grow_and_shrink(tmp_path, make, small, large):
    """Run `small` then `large` samples in one directory and `large` then `small` in another; each
    must end as a fresh run of its final suite ends (the first run of the other directory)."""
    grown, shrunk = tmp_path / "grown", tmp_path / "shrunk"
    run_suite(make(small), grown)
    fresh_small = snapshot(grown)
    run_suite(make(large), shrunk)
    fresh_large = snapshot(shrunk)
    before = (len(events(grown)), len(events(shrunk)))
    run_suite(make(large), grown)
    run_suite(make(small), shrunk)
    assert_same(snapshot(grown), fresh_large)
    assert_same(snapshot(shrunk), fresh_small)
    frame = pd.read_csv(grown / "results.csv")
    assert (frame["n"] == large).all() and (frame["n_valid"] <= large).all()
    cell = json.loads(next((grown / "cells").iterdir()).joinpath("metrics.json").read_text())
    assert cell["images"]["count"] == large and cell["labelers"]["synthfaces-eval"]["n"] == large
    return events(grown)[before[0]:], events(shrunk)[before[1]:]


@pytest.mark.parametrize("method, batch_size, small, large, regenerated", [
    # plain sampling: image i depends on its seed only, so growing makes only the new seeds
    ({"name": "none"}, 4, 4, 12, range(7, 15)),
    # distribution guidance couples a batch but allocates nothing: the two full batches stay
    ({"name": "distribution_guidance", "params": {"scale": 1.0}}, 4, 8, 12, range(11, 15)),
    # sample guidance allocates classes over all the cell's seeds, in batches whose last is partial:
    # a change of samples changes every image
    ({"name": "sample_guidance", "params": {"scale": 1.0}}, 5, 4, 12, range(3, 15)),
], ids=["none", "distribution_guidance", "sample_guidance"])
def test_growing_or_shrinking_samples_ends_as_a_fresh_run(tmp_path, tiny_model_dir, method, batch_size, small,
                                                          large, regenerated):
    def make(samples):
        return make_suite(tmp_path, tiny_model_dir, f"n{samples}", methods=[method], batch_size=batch_size,
                          samples=samples, metrics=["fairness", "fid"], fid=SYNTHFACES_FID_16)

    on_growing, on_shrinking = grow_and_shrink(tmp_path, make, small, large)
    assert sorted(generated_seeds(on_growing)) == list(regenerated)
    if method["name"] == "sample_guidance":  # the 4 images of 12 allocated otherwise: made again
        assert sorted(generated_seeds(on_shrinking)) == list(range(3, 3 + small))
    else:
        assert on_shrinking == []


def test_prompt_debiasing_on_a_text_model_grown_or_shrunk_ends_as_a_fresh_run(tmp_path, tiny_text_adapter):
    """Prompt debiasing allocates phrases over all the cell's seeds: image 0's prompt depends on
    how many samples the cell has."""
    from audit.registry import MODELS, register_model

    register_model("tiny-text-resume", lambda device, dtype: tiny_text_adapter)
    try:
        def make(samples):
            return make_suite(tmp_path, "unused", f"n{samples}", samples=samples, batch_size=3,
                              models=[{"name": "text", "source": "custom:tiny-text-resume", "steps": 2,
                                       "prompts": ["a photo of a person"]}],
                              methods=[{"name": "prompt"}])

        on_growing, _ = grow_and_shrink(tmp_path, make, 4, 9)
    finally:
        MODELS.pop("tiny-text-resume")
    prompts = pd.read_parquet(next((tmp_path / "grown" / "cells").iterdir()) / "samples.parquet")["prompt"]
    assert prompts.str.contains("skin").all()  # the allocated phrases
    assert generated_seeds(on_growing)  # the earlier prompts no longer held


def test_a_half_done_cell_resumes_by_seed_with_another_batch_size(tmp_path, tiny_model_dir):
    """The fix for out-of-memory on a GPU: resume with a smaller (or larger) batch_size. For a
    batch-independent method the cell is the same and its finished images are kept."""
    reference = tmp_path / "reference"
    run_suite(make_suite(tmp_path, tiny_model_dir, samples=10, batch_size=4), reference)
    out = tmp_path / "out"
    run_suite(make_suite(tmp_path, tiny_model_dir, samples=10, batch_size=4), out)
    cell = next((out / "cells").iterdir())
    # as if killed during the third batch: its marker and images gone, nothing measured
    (cell / "batches" / "000002.json").unlink()
    for seed in (11, 12):
        (cell / "images" / f"{seed:08d}.png").unlink()
    (cell / "metrics.json").unlink()
    before = len(events(out))
    run_suite(make_suite(tmp_path, tiny_model_dir, samples=10, batch_size=8), out)
    assert generated_seeds(events(out)[before:]) == [11, 12]
    assert_same(snapshot(out), snapshot(reference))


def inject_out_of_memory(monkeypatch, above: int, probes: bool = False):
    """CUDA out-of-memory for every batch of more than `above` evaluation images (or, with
    `probes`, of probe-training images, on seeds from 10,000,000)."""
    from audit.models.adapter import ModelAdapter

    real = ModelAdapter.generate

    def generate(self, seeds, *args, **kwargs):
        if len(seeds) > above and (min(seeds) >= 10_000_000) == probes:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(seeds)} GiB")
        return real(self, seeds, *args, **kwargs)

    monkeypatch.setattr(ModelAdapter, "generate", generate)


def test_out_of_memory_halves_the_batch_of_a_batch_independent_method(tmp_path, tiny_model_dir, monkeypatch):
    run_suite(make_suite(tmp_path, tiny_model_dir, batch_size=8), tmp_path / "reference")
    inject_out_of_memory(monkeypatch, above=2)
    out = tmp_path / "out"
    run_suite(make_suite(tmp_path, tiny_model_dir, batch_size=8), out)
    assert_same(snapshot(out), snapshot(tmp_path / "reference"))
    halved = [line for line in (out / "events.log").read_text().splitlines() if "out of memory" in line]
    assert len(halved) == 2 and "continuing with batches of 4" in halved[0] and "batches of 2" in halved[1]
    markers = sorted(next((out / "cells").iterdir()).joinpath("batches").glob("*.json"))
    assert [len(json.loads(m.read_text())["seeds"]) for m in markers] == [2, 2, 2, 2]


def test_out_of_memory_in_a_batch_coupled_method_stops_with_one_line(tmp_path, tiny_model_dir, monkeypatch):
    """Guidance couples a batch's samples: halving the batch would change the numbers with the
    GPU's memory, so the run stops and says which batch_size to set."""
    path = suite_file(tmp_path, tiny_model_dir, methods=[{"name": "none"},
                                                          {"name": "distribution_guidance", "params": {"scale": 1.0}}],
                      batch_size=8)
    inject_out_of_memory(monkeypatch, above=4)
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cell tiny__distribution_guidance__skin_tone__") and "batch_size: 4" in line
    guided = next((tmp_path / "out" / "cells").glob("tiny__distribution_guidance*"))
    assert not list(guided.glob("batches/*.json"))  # nothing half-made counts as generated
    plain = next((tmp_path / "out" / "cells").glob("tiny__none*"))
    assert (plain / "metrics.json").exists()  # the batch-independent cell before it finished, halving


def test_out_of_memory_while_training_probes_stops_with_one_line(tmp_path, tiny_model_dir, monkeypatch):
    path = suite_file(tmp_path, tiny_model_dir, methods=[{"name": "distribution_guidance", "params": {"scale": 1.0}}])
    inject_out_of_memory(monkeypatch, above=4, probes=True)
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert "out of memory on cpu outside image generation: lower probe.batch_size (8)" in line


def test_a_second_process_on_the_same_output_directory_is_turned_away(tmp_path, tiny_model_dir):
    path = suite_file(tmp_path, tiny_model_dir)
    out, gate = tmp_path / "out", tmp_path / "gate"
    gate.mkdir()
    # The first run holds the directory, paused inside generation until the test opens the gate.
    holder = subprocess.Popen([sys.executable, "-c", f"""
import pathlib, time
import audit.run.cell as cell_module
from audit.run.suite import run_suite
from audit.spec import load_suite
real = cell_module.generate_cell
def paused(ctx, cell, method):
    pathlib.Path({str(gate)!r}, "started").touch()
    while not pathlib.Path({str(gate)!r}, "go").exists():
        time.sleep(0.05)
    return real(ctx, cell, method)
cell_module.generate_cell = paused
run_suite(load_suite({str(path)!r}), {str(out)!r})
"""], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (gate / "started").exists() and holder.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (gate / "started").exists(), holder.stderr.read() if holder.poll() is not None else "no start"
        command = [sys.executable, "-m", "audit.cli"]
        second = subprocess.run([*command, "run", str(path), "-o", str(out)], capture_output=True, text=True,
                                timeout=600)
        report = subprocess.run([*command, "report", str(out)], capture_output=True, text=True, timeout=600)
        (gate / "go").touch()
        assert holder.wait(timeout=600) == 0, holder.stderr.read()
    finally:
        if holder.poll() is None:
            holder.kill()
    for result in (second, report):
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "is in use by another diffaudit process (diffaudit run, pid" in line and str(holder.pid) in line
    assert not (out / "report").exists()
    generated = len(events(out))
    assert generated == 2  # the first run's two batches, made once
    again = subprocess.run([*command, "run", str(path), "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(events(out)) == generated  # it resumes the finished run: nothing generated twice


# -- probes -------------------------------------------------------------------------------------

def tiny_probe(value: float) -> Probe:
    probe = Probe("skin_tone", ["light", "dark"], [999, 500], dim=6, meta={"val_accuracy": [value, value]})
    with torch.no_grad():
        probe.weight.fill_(value)
    return probe


def test_a_probe_save_killed_halfway_never_looks_saved(tmp_path, monkeypatch):
    import audit.probes.probe as module

    folder = tmp_path / "probe"
    tiny_probe(0.5).save(folder)
    real_save_file = module.save_file

    def killed_while_writing(tensors, path):  # half the file on disk, then the process dies
        real_save_file(tensors, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_file", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        tiny_probe(0.7).save(folder)
    monkeypatch.setattr(module, "save_file", real_save_file)
    assert not Probe.saved(folder) and not list(folder.glob(".*.tmp"))
    with pytest.raises(ProbeError, match="no probe at"):
        Probe.load(folder)

    def killed_before_the_json(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "atomic_write_json", killed_before_the_json)
    with pytest.raises(KeyboardInterrupt):
        tiny_probe(0.7).save(folder)
    assert not Probe.saved(folder)  # weights without probe.json: not a probe, trained again


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "probe.safetensors").write_bytes((d / "probe.safetensors").read_bytes()[:100]),
     "probe.safetensors is missing or damaged"),
    (lambda d: (d / "probe.safetensors").unlink(), "probe.safetensors is missing or damaged"),
    (lambda d: (d / "probe.json").write_text('{"attribute": "skin_t'), "probe.json is damaged"),
    (lambda d: (d / "probe.safetensors").write_bytes((d.parent / "other" / "probe.safetensors").read_bytes()),
     "does not match the checksum"),
], ids=["torn-weights", "no-weights", "torn-json", "other-weights"])
def test_loading_a_damaged_probe_is_one_line(tmp_path, damage, message):
    tiny_probe(0.5).save(tmp_path / "probe")
    tiny_probe(0.9).save(tmp_path / "other")
    damage(tmp_path / "probe")
    with pytest.raises(ProbeError, match=message) as error:
        Probe.load(tmp_path / "probe")
    assert "\n" not in str(error.value) and isinstance(error.value, SuiteError)


def test_a_damaged_probe_cached_in_the_run_is_trained_again(tmp_path, tiny_model_dir):
    guided = {"methods": [{"name": "distribution_guidance", "params": {"scale": 1.0}}], "samples": 4}
    reference = run_suite(make_suite(tmp_path, tiny_model_dir, **guided), tmp_path / "reference")
    out = tmp_path / "out"
    run_suite(make_suite(tmp_path, tiny_model_dir, **guided), out)
    (weights,) = (out / "probes").rglob("probe.safetensors")
    weights.write_bytes(weights.read_bytes()[:64])  # torn by a full disk, say
    for cell in (out / "cells").iterdir():
        for file in cell.rglob("*"):
            if file.is_file():
                file.unlink()
    frame = run_suite(make_suite(tmp_path, tiny_model_dir, **guided), out)
    pd.testing.assert_frame_equal(frame.drop(columns=VOLATILE), reference.drop(columns=VOLATILE))
    assert any("is damaged, training it again" in line for line in (out / "events.log").read_text().splitlines())
    Probe.load(weights.parent)


# -- images -------------------------------------------------------------------------------------

@pytest.fixture
def finished(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    run_suite(make_suite(tmp_path, tiny_model_dir, metrics=["fairness", "fid"], fid=SYNTHFACES_FID_16), out)
    cell = next((out / "cells").iterdir())
    return out, cell, snapshot(out)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_the_report_names_missing_and_unreadable_images(finished):
    out, cell, _ = finished
    truncate(cell / "images" / "00000005.png")
    (cell / "images" / "00000008.png").unlink()
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith(f"warning: cell {cell.name}: 2 of its images are missing or unreadable")
    assert "images/00000005.png (unreadable (truncated" in warning and "images/00000008.png (missing)" in warning
    index = (out / "report" / "index.html").read_text()
    page = next((out / "report" / "cells").glob("*.html")).read_text()
    for html in (index, page):
        assert 'id="image-problems"' in html and "images/00000005.png" in html and "images/00000008.png" in html


def test_measure_only_names_an_unreadable_image_in_one_line(finished):
    out, cell, _ = finished
    truncate(cell / "images" / "00000005.png")
    result = CliRunner().invoke(app, ["run", str(out.parent / "suite.yaml"), "-o", str(out), "--measure-only"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cell {cell.name}: cells/{cell.name}/images/00000005.png is unreadable")
    assert "without --measure-only" in line


def test_a_truncated_image_of_a_finished_cell_is_generated_again(finished, tmp_path, tiny_model_dir):
    """Adding a labeler relabels a finished cell's images: a truncated one (a copy cut short) is
    generated again from its seed instead of crashing the labeler."""
    out, cell, reference = finished
    original = (cell / "images" / "00000005.png").read_bytes()
    truncate(cell / "images" / "00000005.png")
    more = make_suite(tmp_path, tiny_model_dir, metrics=["fairness", "fid"], fid=SYNTHFACES_FID_16,
                      labelers=["synthfaces-eval", "synthfaces-pseudo"])
    run_suite(more, out)
    assert (cell / "images" / "00000005.png").read_bytes() == original
    regenerating = events(out, "regenerating")
    assert len(regenerating) == 1 and "seed 5: images/00000005.png is unreadable" in regenerating[0]
    frame = pd.read_csv(out / "results.csv").drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(frame[frame["labeler"] == "synthfaces-eval"].reset_index(drop=True), reference[0])
    assert len(pd.read_parquet(cell / "labels-synthfaces-pseudo.parquet")) == 8
