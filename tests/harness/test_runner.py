"""The runner end to end on a tiny real diffusers model: store layout, resume, label cache, index."""

import json
import os
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from audit.files import UnsafePathError, atomic_write_json, inside
from audit.metrics.functional import cohens_kappa
from audit.probes.probe import Probe
from audit.run.suite import run_suite
from audit.spec import load_suite
from audit.store import RunStore, atomic_write_parquet


def tiny_suite(tmp_path, model_dir, **changes):
    data = {
        "name": "tiny",
        "models": [{"name": "tiny", "source": str(model_dir), "steps": 3}],
        "methods": [{"name": "none"}, {"name": "distribution_guidance", "params": {"scale": 1.0}}],
        "settings": [{"attributes": ["skin_tone"], "target": "uniform"},
                     {"attributes": ["skin_tone", "eyeglasses"], "target": "uniform"}],
        "samples": 10, "batch_size": 4, "seed": 5,
        "labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo",
        "probe": {"n": 16, "batch_size": 8},
        "metrics": ["fairness", "fid"], "fid": {"extractor": "synthfaces", "reference": "synthfaces:biased", "n": 40},
    }
    data.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_suite(path)


def events(out):
    log = out / "events.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("run")
    suite = tiny_suite(tmp, tiny_model_dir)
    frame = run_suite(suite, tmp / "out")
    return suite, tmp / "out", frame


def test_run_writes_results_store_and_index(finished_run):
    suite, out, frame = finished_run
    assert len(frame) == 4 and set(frame["status"]) == {"done"}
    csv = pd.read_csv(out / "results.csv")
    for column in ("model", "method", "attributes", "target", "labeler", "n", "n_valid", "fd", "fd_lo", "fd_hi",
                   "kl", "chi2_p", "fid", "clip_score", "seconds", "images_per_s"):
        assert column in csv.columns
    assert (csv["fd_lo"] <= csv["fd"]).all() and (csv["fd"] <= csv["fd_hi"]).all()
    assert csv["fid"].notna().all() and (csv["n"] == 10).all()
    cell_dirs = sorted((out / "cells").iterdir())
    assert len(cell_dirs) == 4
    for cell in cell_dirs:
        assert len(list((cell / "images").glob("*.png"))) == 10
        samples = pd.read_parquet(cell / "samples.parquet")
        assert samples["seed"].tolist() == list(range(5, 15))
        manifest = json.loads((cell / "manifest.json").read_text())
        for key in ("model", "scheduler", "steps", "seeds", "method", "versions", "device", "labelers"):
            assert key in manifest
        assert manifest["seeds"]["first"] == 5 and manifest["versions"]["torch"]
        labels = pd.read_parquet(cell / "labels-synthfaces-eval.parquet")
        assert len(labels) == 10 and labels["valid"].all()
    with sqlite3.connect(out / "index.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM cells WHERE status='done'").fetchone()[0] == 4
        assert con.execute("SELECT COUNT(*) FROM metrics WHERE metric='fd'").fetchone()[0] == 4
    probes = list((out / "probes").rglob("probe.json"))
    assert len(probes) == 2  # skin_tone and eyeglasses, trained once, shared by both settings
    for probe_json in probes:  # each measured its confusion on its own samples (not the identity)
        confusion = Probe.load(probe_json.parent).confusion
        assert torch.allclose(confusion.sum(-1), torch.ones(confusion.shape[:2]))
        assert not torch.equal(confusion, torch.eye(confusion.shape[-1]).expand_as(confusion))


def test_same_seeds_give_identical_images_across_methods_and_runs(finished_run, tmp_path, tiny_model_dir):
    _, out, frame = finished_run
    rerun = run_suite(tiny_suite(tmp_path, tiny_model_dir, methods=[{"name": "none"}]), tmp_path / "again")
    for cell_id in rerun["cell_id"]:
        first = sorted((out / "cells" / cell_id / "images").iterdir())
        second = sorted((tmp_path / "again" / "cells" / cell_id / "images").iterdir())
        assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_eta_samples_stochastically_per_image_and_counts_in_the_cell_id_only_when_set(finished_run, tmp_path,
                                                                                     tiny_model_dir):
    _, out, frame = finished_run
    none_only = {"methods": [{"name": "none"}], "settings": [{"attributes": ["skin_tone"], "target": "uniform"}],
                 "metrics": ["fairness"]}
    plain = tiny_suite(tmp_path, tiny_model_dir, **none_only)
    unset = run_suite(tiny_suite(tmp_path, tiny_model_dir, models=[{**plain.models[0].model_dump(), "eta": None}],
                                 **none_only), tmp_path / "unset")
    assert unset["cell_id"][0] in set(frame["cell_id"])  # eta unset: the id of runs made before eta existed

    def images(run_dir, cell_id):
        return [p.read_bytes() for p in sorted((run_dir / "cells" / cell_id / "images").iterdir())]

    zero = run_suite(tiny_suite(tmp_path, tiny_model_dir, models=[{**plain.models[0].model_dump(), "eta": 0.0}],
                                **none_only), tmp_path / "zero")
    assert zero["cell_id"][0] == unset["cell_id"][0]  # eta 0 is the step eta unset takes
    assert images(tmp_path / "zero", zero["cell_id"][0]) == images(tmp_path / "unset", unset["cell_id"][0])

    stochastic = {"models": [{**plain.models[0].model_dump(), "eta": 1.0}]}
    by_4 = run_suite(tiny_suite(tmp_path, tiny_model_dir, **stochastic, **none_only), tmp_path / "eta-4")
    by_3 = run_suite(tiny_suite(tmp_path, tiny_model_dir, **stochastic, **none_only, batch_size=3), tmp_path / "eta-3")
    cell = by_4["cell_id"][0]
    assert cell != unset["cell_id"][0]
    assert images(tmp_path / "eta-4", cell) != images(tmp_path / "unset", unset["cell_id"][0])
    assert images(tmp_path / "eta-4", cell) == images(tmp_path / "eta-3", by_3["cell_id"][0])  # per-image noise
    manifest = json.loads((tmp_path / "eta-4" / "cells" / cell / "manifest.json").read_text())
    assert manifest["eta"] == 1.0


def test_unguided_images_are_generated_once_and_shared_by_every_setting(finished_run):
    _, out, frame = finished_run
    unguided = frame[frame["method"] == "none"]["cell_id"].tolist()
    assert len(unguided) == 2
    generated = [line for line in events(out) if line.split()[1] == "generated"]
    reused = [line for line in events(out) if line.split()[1] == "reused"]
    assert sum(any(c in line for c in unguided) for line in generated) == 3  # 10 samples, batches of 4
    assert len(reused) == 3
    first, second = (sorted((out / "cells" / c / "images").iterdir()) for c in unguided)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    markers = [json.loads(p.read_text()) for c in unguided for p in (out / "cells" / c / "batches").glob("*.json")]
    assert sum("copied_from" in m for m in markers) == 3
    # Guided cells depend on their setting and are never shared.
    guided = frame[frame["method"] == "distribution_guidance"]["cell_id"].tolist()
    assert not any(c in line for c in guided for line in reused)


def test_rerun_resumes_without_regenerating(finished_run, tiny_model_dir):
    suite, out, frame = finished_run
    before = len(events(out))
    again = run_suite(suite, out)
    assert len(events(out)) == before
    pd.testing.assert_frame_equal(again.drop(columns=["seconds", "images_per_s"]),
                                  frame.drop(columns=["seconds", "images_per_s"]))


def test_interrupted_cell_resumes_from_finished_batches(tmp_path, tiny_model_dir):
    suite = tiny_suite(tmp_path, tiny_model_dir, methods=[{"name": "none"}], settings=[
        {"attributes": ["skin_tone"], "target": "uniform"}])
    reference = run_suite(suite, tmp_path / "reference")
    out = tmp_path / "out"
    run_suite(suite, out)
    cell = next((out / "cells").iterdir())
    # Simulate a crash after batch 0: later batches, samples, labels and metrics are gone.
    for marker in sorted((cell / "batches").glob("*.json"))[1:]:
        marker.unlink()
    for name in ("metrics.json", "samples.parquet", "labels-synthfaces-eval.parquet"):
        (cell / name).unlink()
    (cell / "images" / "00000013.png").write_bytes(b"torn")  # a half-written image of an unfinished batch
    before = events(out)
    resumed = run_suite(suite, out)
    regenerated = events(out)[len(before):]
    assert len(regenerated) == 2 and all("batch 0" not in line for line in regenerated)
    pd.testing.assert_frame_equal(resumed.drop(columns=["seconds", "images_per_s"]),
                                  reference.drop(columns=["seconds", "images_per_s"]))


def test_an_interrupted_run_keeps_a_results_table_of_the_cells_it_finished(tmp_path, tiny_model_dir, monkeypatch):
    import audit.run.suite

    suite = tiny_suite(tmp_path, tiny_model_dir, methods=[{"name": "none"}], metrics=["fairness"])
    real_run_cell, calls = audit.run.suite.run_cell, []

    def run_cell_then_crash(ctx, cell):
        calls.append(cell.cell_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the run during the second cell
        return real_run_cell(ctx, cell)

    monkeypatch.setattr(audit.run.suite, "run_cell", run_cell_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(table["cell_id"]) == calls
    assert list(table["status"]) == ["done", "pending"]
    assert table["fd"].notna().tolist() == [True, False]
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["status"] == "done"


def test_adding_a_labeler_labels_existing_images_only(tmp_path, tiny_model_dir):
    suite = tiny_suite(tmp_path, tiny_model_dir, methods=[{"name": "none"}],
                       settings=[{"attributes": ["smile"], "target": "uniform"}], metrics=["fairness"])
    out = tmp_path / "out"
    run_suite(suite, out)
    generated = len(events(out))
    more = tiny_suite(tmp_path, tiny_model_dir, methods=[{"name": "none"}],
                      settings=[{"attributes": ["smile"], "target": "uniform"}], metrics=["fairness"],
                      labelers=["synthfaces-eval", "synthfaces-pseudo"])
    frame = run_suite(more, out)
    assert len(events(out)) == generated
    assert sorted(frame["labeler"]) == ["synthfaces-eval", "synthfaces-pseudo"]
    assert len(list(out.rglob("labels-synthfaces-pseudo.parquet"))) == 1
    cell = next((out / "cells").iterdir())
    metrics = json.loads((cell / "metrics.json").read_text())
    a, b = (pd.read_parquet(cell / f"labels-{n}.parquet") for n in ("synthfaces-eval", "synthfaces-pseudo"))
    columns = ["p:smile:no", "p:smile:yes"]
    expected = cohens_kappa(a[columns].to_numpy().argmax(1), b[columns].to_numpy().argmax(1), 2)
    np.testing.assert_equal(metrics["agreement"]["smile"]["synthfaces-eval|synthfaces-pseudo"], expected)


def test_paths_cannot_escape_the_output_directory(tmp_path):
    assert inside(tmp_path, "cells/a") == (tmp_path / "cells" / "a").resolve()
    for bad in ("../x", "/etc/passwd", "cells/../../x"):
        with pytest.raises(UnsafePathError):
            inside(tmp_path, bad)
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(UnsafePathError):
        inside(tmp_path, "link/etc")


def test_each_labeler_judges_only_the_settings_it_labels(tmp_path, tiny_model_dir):
    """A suite mixing labelers (e.g. a gender classifier beside a skin-tone one) measures each
    setting with the labelers that label it; a guided cell whose attributes the probe labeler
    cannot label is marked not applicable instead of failing."""
    from audit.registry import LABELERS, register_labeler
    from audit.zoo.labelers import SynthFacesLabeler

    def skin_only(base):
        def factory(**options):
            labeler = SynthFacesLabeler(base, **options)
            labeler.name = f"skin-only-{base}"
            labeler.attributes = {"skin_tone": labeler.attributes["skin_tone"]}
            return labeler
        return factory

    for base in ("synthfaces-eval", "synthfaces-pseudo"):
        register_labeler(f"skin-only-{base}", skin_only(base))
    try:
        suite = tiny_suite(tmp_path, tiny_model_dir, labelers=["synthfaces-eval", "skin-only-synthfaces-eval"],
                           probe_labeler="skin-only-synthfaces-pseudo", samples=4)
        frame = run_suite(suite, tmp_path / "out")
    finally:
        for base in ("synthfaces-eval", "synthfaces-pseudo"):
            LABELERS.pop(f"skin-only-{base}")
    done = frame[frame["status"] == "done"]
    by_setting = done.groupby("attributes")["labeler"].apply(set).to_dict()
    assert by_setting == {"skin_tone": {"synthfaces-eval", "skin-only-synthfaces-eval"},
                          "skin_tonexeyeglasses": {"synthfaces-eval"}}
    skipped = frame[frame["status"] == "not_applicable"]
    assert list(zip(skipped["method"], skipped["attributes"], strict=True)) == [
        ("distribution_guidance", "skin_tonexeyeglasses")]
    metrics = json.loads(next((tmp_path / "out" / "cells").glob("tiny__none__skin_tonexeyeglasses*"))
                         .joinpath("metrics.json").read_text())
    assert metrics["labelers_skipped"] == {"skin-only-synthfaces-eval": "does not label eyeglasses"}


def test_labeler_options_reach_the_labeler_and_bad_ones_fail_in_one_line(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from audit.cli import app
    from audit.run.context import RunContext
    from audit.spec import SuiteError
    from audit.store import RunStore

    suite = tiny_suite(tmp_path, tiny_model_dir, labeler_options={"synthfaces-eval": {"batch_size": 7}})
    ctx = RunContext(suite=suite, store=RunStore(tmp_path / "out"))
    assert ctx.labeler("synthfaces-eval").batch_size == 7
    with pytest.raises(SuiteError, match="labeler_options.synthfaces-eval: unknown option 'colour'"):
        tiny_suite(tmp_path, tiny_model_dir, labeler_options={"synthfaces-eval": {"colour": "blue"}})
    result = CliRunner().invoke(app, ["run", str(tmp_path / "suite.yaml"), "-o", str(tmp_path / "cli")])
    last = result.output.strip().splitlines()[-1]
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert last.startswith("error: ") and "labeler_options.synthfaces-eval" in last and "colour" in last
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize("params, message", [
    ({"scale": "auto", "push": "some"}, "push should be 'all', 'surplus', 'assign' or 'assign_once' (got 'some')"),
    ({"scale": 2.0, "aim": [0.6, 0.6]}, "aim must be 2 non-negative proportions"),
    ({"scale": "auto", "strength": 3}, "unknown param 'strength'; allowed: scale, loss, path"),
    ({"scale": "auto", "auto_tolerance": -1}, "auto_tolerance should be greater than or equal to 0 (got -1)"),
])
def test_bad_method_params_fail_in_one_line_when_the_suite_loads(tmp_path, tiny_model_dir, params, message):
    from audit.spec import SuiteError

    with pytest.raises(SuiteError, match="methods\\[0\\].params: ") as error:
        tiny_suite(tmp_path, tiny_model_dir, settings=[{"attributes": ["skin_tone"], "target": "uniform"}],
                   methods=[{"name": "distribution_guidance", "label": "dg", "params": params}])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_params_that_depend_on_the_setting_fail_in_one_line_before_any_calibration(tmp_path, tiny_model_dir):
    from audit.spec import SuiteError

    suite = tiny_suite(tmp_path, tiny_model_dir, settings=[{"attributes": ["skin_tone"], "target": "uniform"}],
                       methods=[{"name": "distribution_guidance", "label": "dg",
                                 "params": {"scale": "auto", "aim": [0.2, 0.3, 0.5]}}])
    with pytest.raises(SuiteError, match="methods 'dg': bad params: .*aim must be 2 non-negative proportions") as error:
        run_suite(suite, tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not list((tmp_path / "out").glob("calibration/*.json"))


def test_zoo_probes_are_used_only_for_the_weights_they_were_trained_on(tmp_path):
    from audit.run.context import RunContext
    from audit.run.probes import probe_dir
    from audit.spec import plan
    from audit.store import RunStore
    from audit.zoo import WEIGHTS_DIR

    suite = load_suite("benchmarks/research/guidance_bars.yaml")
    ctx = RunContext(suite=suite, store=RunStore(tmp_path / "out"), log=lambda s: None)
    cell = next(c for c in plan(suite) if c.method.name == "distribution_guidance")
    shipped = WEIGHTS_DIR / "probes" / "synthfaces-ddpm" / "synthfaces-pseudo" / "skin_tone"
    assert probe_dir(ctx, cell, "skin_tone") == shipped
    assert json.loads((shipped / "probe.json").read_text())["revision"] == ctx.adapter(cell).revision
    ctx.adapter(cell).revision = "step9999-retrained"  # the zoo model was retrained since
    stale = probe_dir(ctx, cell, "skin_tone")
    assert stale != shipped and stale.is_relative_to(tmp_path / "out") and "step9999-retrained" in str(stale)


def test_auto_scale_is_calibrated_on_images_judged_by_the_probe_labeler(tmp_path, tiny_model_dir):
    from audit.run.calibration import AIM_SAMPLES, CALIBRATION_SEED, GRID, coarse_samples, interpolated_scale

    suite = tiny_suite(tmp_path, tiny_model_dir, samples=4,
                       settings=[{"attributes": ["skin_tone"], "target": "uniform"}],
                       methods=[{"name": "distribution_guidance", "params": {"scale": "auto"}}])
    frame = run_suite(suite, tmp_path / "out")
    assert set(frame["status"]) == {"done"}
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "calibration").glob("*.json")]
    assert record["config"]["judge"] == "synthfaces-pseudo" and record["tried"]
    # The full trials are a run of neighbouring grid scales around the best one; coarse ones stop
    # at their first batches.
    scales = [t["scale"] for t in record["tried"]]
    first = GRID.index(scales[0])
    assert scales == list(GRID[first:first + len(scales)]) and len(scales) >= 2
    best = GRID.index(min(record["tried"], key=lambda t: t["fd"])["scale"])  # the smallest on ties
    assert all(GRID[j] in scales for j in (best - 1, best + 1) if 0 <= j < len(GRID))
    coarse = coarse_samples(record["config"]["n"], record["config"]["batch"])
    assert all(t["n"] == coarse < t["of"] for t in record["coarse"])
    assert record["scale"] == interpolated_scale(record["tried"], [0.5, 0.5])
    cell = next((tmp_path / "out" / "cells").iterdir())
    method = json.loads((cell / "manifest.json").read_text())["method"]
    assert method["scale"] == record["scale"]
    # A miss beyond the sampling noise is corrected by aiming elsewhere, at the chosen scale,
    # judged on more seeds than the walk's, and only a correction that landed nearer is used.
    missed = min(t["fd"] for t in record["tried"]) > record["noise"]
    assert bool(record["aimed"]) == missed and all(t["scale"] == record["scale"] for t in record["aimed"])
    assert all(t["n"] == AIM_SAMPLES * record["config"]["n"] for t in record["aimed"])
    assert all(t["n"] == record["config"]["n"] for t in record["tried"])
    if record["aim"] is not None:
        corrected = next(t for t in record["aimed"] if t.get("aim") == record["aim"])
        assert corrected["fd"] < record["aimed"][0]["fd"]
    assert method["aim"] == pytest.approx(record["aim"] or [0.5, 0.5])
    assert not any(str(CALIBRATION_SEED) in p.name for p in (cell / "images").iterdir())


def test_a_resumed_cell_keeps_the_scale_its_images_were_generated_with(tmp_path, tiny_model_dir):
    suite = tiny_suite(tmp_path, tiny_model_dir, samples=4,
                       settings=[{"attributes": ["skin_tone"], "target": "uniform"}],
                       methods=[{"name": "distribution_guidance", "params": {"scale": "auto"}}])
    out = tmp_path / "out"
    run_suite(suite, out)
    cell = next((out / "cells").iterdir())
    # Killed after generating, before measuring; since then the calibration record is gone
    # (or the calibration rule changed and would choose another scale).
    (cell / "metrics.json").unlink()
    for record in (out / "calibration").glob("*.json"):
        record.unlink()
    manifest = json.loads((cell / "manifest.json").read_text())
    manifest["method"]["scale"] = 0.125
    (cell / "manifest.json").write_text(json.dumps(manifest))
    frame = run_suite(suite, out)
    assert set(frame["status"]) == {"done"}
    assert not list((out / "calibration").glob("*.json"))  # nothing recalibrated
    assert json.loads((cell / "manifest.json").read_text())["method"]["scale"] == 0.125


def test_measure_only_remeasures_finished_cells_and_generates_nothing(tmp_path, tiny_model_dir):
    from audit.report.html import write_report

    suite = tiny_suite(tmp_path, tiny_model_dir, methods=[{"name": "none"}], samples=4,
                       settings=[{"attributes": ["skin_tone"], "target": "uniform"}])
    out = tmp_path / "out"
    first = run_suite(suite, out)
    cell = next((out / "cells").iterdir())
    metrics = json.loads((cell / "metrics.json").read_text())
    (cell / "metrics.json").write_text(json.dumps({**metrics, "fid": {"value": -1.0}}))  # an older metrics version
    bigger = tiny_suite(tmp_path, tiny_model_dir, methods=[{"name": "none"}], samples=4, settings=[
        {"attributes": ["skin_tone"], "target": "uniform"}, {"attributes": ["eyeglasses"], "target": "uniform"}])
    before = events(out)
    frame = run_suite(bigger, out, measure_only=True)
    assert events(out) == before  # nothing generated
    done = frame[frame["status"] == "done"]
    assert len(done) == 1 and done["fd"].tolist() == first["fd"].tolist() and done["fid"].iloc[0] >= 0
    assert frame[frame["attributes"] == "eyeglasses"]["status"].tolist() == ["incomplete"]
    assert write_report(out).exists()


def test_a_batch_finished_but_not_logged_is_logged_on_resume(tmp_path, tiny_model_dir):
    """A kill between a batch's marker and its events.log line must not leave the audit trail
    short: the next run replays the event from the marker instead of regenerating the batch."""
    suite = tiny_suite(tmp_path, tiny_model_dir, methods=[{"name": "none"}], samples=8,
                       settings=[{"attributes": ["skin_tone"], "target": "uniform"}])
    out = tmp_path / "out"
    run_suite(suite, out)
    lines = events(out)
    assert len(lines) == 2
    (out / "events.log").write_text(lines[0] + "\n")  # as if killed right after batch 1's marker
    (next((out / "cells").iterdir()) / "metrics.json").unlink()
    run_suite(suite, out)
    replayed = events(out)[1:]
    assert len(replayed) == 1 and replayed[0].endswith("(logged on resume)")
    assert " ".join(replayed[0].split()[1:]) == " ".join(lines[1].split()[1:]) + " (logged on resume)"


def test_store_files_get_the_permissions_of_a_plain_write(tmp_path):
    """Images, tables and JSON are created as open() would create them (0666 less the umask), so a
    run directory can be shared or served; mkstemp's owner-only 0600 locked everyone else out."""
    previous = os.umask(0o022)
    try:
        for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
            os.umask(umask)
            out = tmp_path / f"umask-{umask:03o}"
            atomic_write_json(out / "metrics.json", {"fd": 0.1})
            atomic_write_parquet(out / "samples.parquet", pd.DataFrame({"seed": [3]}))
            RunStore(out).write_batch("cell", 0, [3], None, torch.rand(1, 3, 8, 8), 0.1, {})
            files = [p for p in out.rglob("*") if p.is_file()]
            assert {p.suffix for p in files} == {".json", ".parquet", ".png"}
            assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}
    finally:
        os.umask(previous)


def test_half_written_files_of_a_killed_batch_are_removed_on_resume(tmp_path, tiny_model_dir):
    suite = tiny_suite(tmp_path, tiny_model_dir, methods=[{"name": "none"}], samples=8,
                       settings=[{"attributes": ["skin_tone"], "target": "uniform"}])
    out = tmp_path / "out"
    run_suite(suite, out)
    cell = next((out / "cells").iterdir())
    for marker in sorted((cell / "batches").glob("*.json"))[1:]:
        marker.unlink()
    (cell / "metrics.json").unlink()
    (cell / "images" / ".00000004.png.abc123.tmp").write_bytes(b"half")  # killed inside write_batch
    run_suite(suite, out)
    assert not list(out.rglob("*.tmp"))


def test_probe_training_logs_its_progress_with_an_eta(tmp_path, tiny_model_dir):
    """Probes are drawn and labelled before any cell generates (minutes on a CPU): the run's log
    says how many samples are done and when it will finish, at every tenth of probe.n."""
    from audit.run.context import RunContext
    from audit.run.probes import get_probes
    from audit.spec import plan
    from audit.store import RunStore

    suite = tiny_suite(tmp_path, tiny_model_dir)  # probe: 16 samples in batches of 8
    lines: list[str] = []
    ctx = RunContext(suite=suite, store=RunStore(tmp_path / "out"), log=lines.append)
    cell = next(c for c in plan(suite) if c.method.name == "distribution_guidance")
    get_probes(ctx, cell)
    progress = [ln for ln in lines if "samples drawn and labelled" in ln]
    assert [ln.split(": ")[1].split()[0] for ln in progress] == ["8/16", "16/16"], lines
    assert all("ETA" in ln and ln.startswith("probes for tiny") for ln in progress)
    assert progress[-1].endswith("ETA 0:00")
