"""The efficacy benchmarks: the suites reuse the guidance-bars cells, and
benchmarks/batch_ablation.py and benchmarks/efficacy_table.py work end to end on tiny runs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from audit.run.suite import run_suite
from audit.spec import load_suite, plan

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESEARCH = BENCH / "research"


def script(name: str):
    path = BENCH / f"{name}.py"
    if not path.exists():
        path = RESEARCH / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_efficacy_suite_has_the_guidance_bars_cell_ids():
    bars = {c.cell_id for c in plan(load_suite(RESEARCH / "guidance_bars.yaml"))}
    efficacy = load_suite(BENCH / "efficacy.yaml")
    cells = plan(efficacy)
    # guidance_bars.yaml's methods keep their ids; efficacy.yaml adds universal guidance and two
    # labelled distribution-guidance variants (push: surplus, push: assign)
    assert {c.cell_id for c in cells if c.method.display in {"none", "sample_guidance", "distribution_guidance"}} \
        == bars
    assert {c.method.name for c in cells} == {"none", "sample_guidance", "universal_guidance",
                                              "distribution_guidance"}
    assert len(cells) == 24 and efficacy.samples == 1000 and efficacy.batch_size == 64
    assert [f.extractor for f in efficacy.fid] == ["synthfaces", "mobilenet_v2"]
    sweep = plan(load_suite(BENCH / "efficacy_sweep.yaml"))
    assert [c.cell_id for c in sweep if c.method.name == "none"][0] in bars
    scales = {c.method.display: c.method.params["scale"] for c in sweep if c.method.name != "none"}
    assert len(set(scales.values())) >= 5 and len(sweep) == 21
    assert {c.method.params.get("push") for c in sweep if c.method.name == "distribution_guidance"} \
        == {None, "assign", "assign_once"}
    assert {c.method.name for c in sweep} == {"none", "sample_guidance", "universal_guidance", "distribution_guidance"}
    t2i = plan(load_suite(BENCH / "efficacy_t2i.yaml"))
    assert {c.prompt for c in t2i} == {"a photo of a person"} and not any(c.skip_reason for c in t2i)
    assert "prompt" in {c.method.name for c in t2i}
    t2i_bars = plan(load_suite(RESEARCH / "guidance_bars_t2i.yaml"))  # the t2i bar: a subset of the table
    assert {c.cell_id for c in t2i_bars} <= {c.cell_id for c in t2i} and len(t2i_bars) == 2


def tiny_suite_file(tmp_path, model_dir, **changes) -> Path:
    data = {"name": "tiny-efficacy", "models": [{"name": "tiny", "source": str(model_dir), "steps": 1}],
            "methods": [{"name": "none"}, {"name": "distribution_guidance", "params": {"scale": 1.0, "loss": "chi2"}},
                        {"name": "sample_guidance", "params": {"scale": 2.0}}],
            "settings": [{"attributes": ["skin_tone"], "target": "uniform"},
                         {"attributes": ["hair_color"], "target": "uniform"}],
            "samples": 4, "batch_size": 4, "seed": 0, "labelers": ["synthfaces-eval"],
            "probe_labeler": "synthfaces-pseudo", "probe": {"n": 16, "batch_size": 8},
            "metrics": ["fairness", "fid"],
            "fid": [{"extractor": "synthfaces", "reference": "synthfaces:biased", "n": 40}]}
    data.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_batch_ablation_end_to_end(tmp_path, tiny_model_dir):
    ablation = script("batch_ablation")
    suite = tiny_suite_file(tmp_path, tiny_model_dir,
                            models=[{"name": "tiny", "source": str(tiny_model_dir), "steps": 3}])
    out, result_file = tmp_path / "runs", tmp_path / "batch_ablation.json"
    args = ["--suite", str(suite), "--out", str(out), "--batches", "2", "4", "--n", "4", "--steps", "1",
            "--json", str(result_file)]
    result = ablation.main(args)
    assert json.loads(result_file.read_text()) == json.loads(json.dumps(result))
    assert result["samples"] == 4 and result["model"]["steps"] == 1 and result["setting"]["attributes"] == ["skin_tone"]
    assert result["method"]["name"] == "distribution_guidance" and result["fid"][0]["extractor"] == "synthfaces"
    rows = result["batches"]
    assert [r["batch_size"] for r in rows] == [2, 4] and {r["status"] for r in rows} == {"done"}
    for r in rows:
        assert r["fd_lo"] <= r["fd"] <= r["fd_hi"] and r["kl"] >= 0 and r["scale"] == 1.0
        assert r["fid"]["synthfaces"] > 0 and r["seconds"] > 0 and r["n"] == 4
        csv = pd.read_csv(Path(r["run"]) / "results.csv")
        assert len(csv) == 1 and csv["method"].tolist() == ["distribution_guidance"]
    assert rows[0]["cell_id"] != rows[1]["cell_id"]  # batch size is part of a guided cell
    events = {r["batch_size"]: (Path(r["run"]) / "events.log").read_text() for r in rows}
    again = ablation.main(args)  # resumable: the runner reuses every finished cell
    assert [r["fd"] for r in again["batches"]] == [r["fd"] for r in rows]
    assert {r["batch_size"]: (Path(r["run"]) / "events.log").read_text() for r in rows} == events


def test_batch_ablation_picks_the_named_distribution_guidance_entry(tmp_path, tiny_model_dir):
    ablation = script("batch_ablation")
    methods = [{"name": "none"}, {"name": "distribution_guidance", "params": {"scale": 1.0}},
               {"name": "distribution_guidance", "label": "dg-assign", "params": {"scale": 1.0, "push": "assign"}}]
    base = load_suite(tiny_suite_file(tmp_path, tiny_model_dir, methods=methods))
    assert ablation.ablation_suite(base, 8, None, None).methods[0].display == "distribution_guidance"
    (chosen,) = ablation.ablation_suite(base, 8, None, None, "dg-assign").methods
    assert chosen.params["push"] == "assign"
    with pytest.raises(SystemExit) as exit_:
        ablation.main(["--suite", str(tmp_path / "suite.yaml"), "--method", "dg-nope", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("efficacy")
    out = tmp / "out"
    run_suite(load_suite(tiny_suite_file(tmp, tiny_model_dir)), out)
    return out


def test_efficacy_table_end_to_end(tiny_run, tmp_path, capsys):
    table_script = script("efficacy_table")
    json_file, md_file = tmp_path / "efficacy.json", tmp_path / "efficacy.md"
    table = table_script.main([str(tiny_run), "--json", str(json_file), "--markdown", str(md_file)])
    printed = capsys.readouterr().out
    assert json.loads(json_file.read_text()) == json.loads(json.dumps(table))
    csv = pd.read_csv(tiny_run / "results.csv")
    assert len(table["rows"]) == len(csv) == 6 and table["extractors"] == ["synthfaces"]

    lines = md_file.read_text().splitlines()
    assert lines[0] == "| Setting | Method | FD [95% CI] | KL | FID[synthfaces] to target | Seconds |"
    assert lines[1] == "|---|---|---:|---:|---:|---:|"
    body = [ln for ln in lines[2:] if ln.startswith("|")]
    assert len(body) == 6 and all(ln.count("|") == 7 for ln in body)
    for setting, group in csv.groupby("attributes"):
        best = group.loc[group["fd"].idxmin()]
        label = "skin_tone uniform" if setting == "skin_tone" else "hair_color uniform"
        marked = [ln for ln in body if ln.startswith(f"| {label} |") and "**" in ln]
        assert len(marked) >= 1 and any(f"| {best['method']} |" in ln for ln in marked)
        bar = next(b for b in table["settings"] if b["setting"] == label)
        dg, sg = (group[group["method"] == m].iloc[0] for m in ("distribution_guidance", "sample_guidance"))
        quality = lambda r: r["fid_target"] if pd.notna(r["fid_target"]) else r["fid"]  # noqa: E731
        expected = bool(dg["fd"] == group["fd"].min() and quality(dg) <= quality(sg))
        assert bar["passed"] == expected
        assert f"{'PASS' if expected else 'FAIL'}  {label}:" in printed
    assert table["passed"] == all(b["passed"] for b in table["settings"])


def test_efficacy_table_bar_verdicts(tmp_path):
    """The bar on a results.csv with known numbers: passes only where distribution guidance has
    the lowest FD and an FID to the target reference no larger than sample guidance's, for every
    extractor measured; FID to the biased reference (which rewards not debiasing) is not judged."""
    table_script = script("efficacy_table")
    rows = []
    for setting, dg, sg in (("a", (0.02, 5.0, 9.0), (0.10, 6.0, 9.5)),    # pass
                            ("b", (0.02, 7.0, 9.0), (0.10, 6.0, 9.5)),    # FID[synthfaces] larger
                            ("c", (0.02, 5.0, 9.9), (0.10, 6.0, 9.5)),    # FID[mobilenet_v2] larger
                            ("d", (0.20, 5.0, 9.0), (0.10, 6.0, 9.5))):   # not the lowest FD
        for method, (fd, fid, mob) in (("none", (0.5, 4.0, 8.0)), ("distribution_guidance", dg),
                                       ("sample_guidance", sg)):
            rows.append({"model": "m", "method": method, "attributes": setting, "target": "uniform", "prompt": None,
                         "labeler": "synthfaces-eval", "status": "done", "n": 100, "n_valid": 100, "fd": fd,
                         "fd_lo": fd / 2, "fd_hi": fd * 2, "kl": fd, "fid_target": fid,
                         "fid": fid + 20 * (method == "distribution_guidance"),  # to the biased reference
                         "fid_extractor": "synthfaces", "fid[mobilenet_v2]": mob, "fid_target[mobilenet_v2]": mob,
                         "seconds": 12.0, "cell_id": f"{setting}-{method}"})
    rows.append({**rows[0], "method": "prompt", "status": "not_applicable", "fd": None, "cell_id": "a-prompt"})
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    table = table_script.main([str(run), "--markdown", str(tmp_path / "t.md")])
    verdicts = {b["setting"]: b["passed"] for b in table["settings"]}
    assert verdicts == {"a uniform": True, "b uniform": False, "c uniform": False, "d uniform": False}
    assert not table["passed"] and table["extractors"] == ["synthfaces", "mobilenet_v2"]
    text = (tmp_path / "t.md").read_text()
    assert "| a uniform | distribution_guidance | **0.020 [0.010, 0.040]** | 0.020 | 5.00 | 9.00 | 12 |" in text
    assert "| d uniform | sample_guidance | **0.100 [0.050, 0.200]** |" in text
    assert "| a uniform | prompt | — (not_applicable) |" in text
    with pytest.raises(SystemExit) as exit_:
        table_script.main([str(tmp_path / "missing")])
    assert exit_.value.code == 2


def test_archived_run_resumes_without_regenerating_and_tabulates_the_same(tiny_run, tmp_path, tiny_model_dir):
    """A run archived by benchmarks/archive_run.py (measurements only, no images) and copied into a
    fresh output directory is resumed as finished: nothing is generated, the numbers are the same."""
    archive = script("archive_run")
    dest = tmp_path / "archive"
    written = archive.main([str(tiny_run), str(dest)])
    assert {p.name for p in written} >= {"suite.json", "results.csv", "metrics.json", "manifest.json"}
    assert not list(dest.rglob("*.png")) and not list(dest.rglob("*.parquet"))
    cells = sorted(p.parent.name for p in (tiny_run / "cells").glob("*/metrics.json"))
    assert sorted(p.parent.name for p in dest.glob("cells/*/metrics.json")) == cells
    resumed = tmp_path / "resumed"
    shutil.copytree(dest, resumed)
    frame = run_suite(load_suite(tiny_suite_file(tmp_path, tiny_model_dir)), resumed)
    assert not list(resumed.rglob("*.png"))  # every cell was taken as finished
    before = pd.read_csv(tiny_run / "results.csv").sort_values("cell_id")
    assert frame.sort_values("cell_id")["fd"].tolist() == pytest.approx(before["fd"].tolist(), nan_ok=True)
    table = script("efficacy_table").main([str(resumed)])
    assert len(table["rows"]) == len(before)
    with pytest.raises(SystemExit, match="no suite.json"):
        archive.main([str(tmp_path / "missing"), str(tmp_path / "x")])


def test_efficacy_table_names_the_device_when_runs_mix_devices(tiny_run, tmp_path):
    """Cells sampled on a GPU and on the CPU can share a table, but their seconds cannot be compared."""
    table_script = script("efficacy_table")
    assert "Device" not in table_script.markdown(table_script.build_table([tiny_run])).splitlines()[0]
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_run, mixed, ignore=shutil.ignore_patterns("images"))
    manifest = sorted((mixed / "cells").glob("*/manifest.json"))[-1]
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "device": "cuda"}))
    lines = table_script.markdown(table_script.build_table([mixed])).splitlines()
    body = [ln for ln in lines[2:] if ln.startswith("|")]
    assert lines[0].endswith("| Seconds | Device |") and "Seconds compare only within a device" in lines[-1]
    assert any(ln.endswith("| cuda |") for ln in body) and any(ln.endswith("| cpu |") for ln in body)


def test_sweep_table_compares_curves_at_matched_fd(tmp_path):
    """Each method's fixed scales form a curve (`push: assign` its own), and the bar is read per FD
    level: the lowest FID to target a curve reaches at or below it, against sample guidance's."""
    sweep = script("sweep_table")
    methods = [{"name": "none"},
               {"name": "distribution_guidance", "label": "dg-1", "params": {"scale": 1.0, "loss": "chi2"}},
               {"name": "distribution_guidance", "label": "dg-4", "params": {"scale": 4.0, "loss": "chi2"}},
               {"name": "distribution_guidance", "label": "as-2", "params": {"scale": 2.0, "loss": "chi2",
                                                                              "push": "assign"}},
               {"name": "distribution_guidance", "label": "as-8", "params": {"scale": 8.0, "loss": "chi2",
                                                                              "push": "assign"}},
               {"name": "sample_guidance", "label": "sg-2", "params": {"scale": 2.0}},
               {"name": "sample_guidance", "label": "sg-8", "params": {"scale": 8.0}}]
    numbers = {"none": (0.5, 20.0), "dg-1": (0.2, 4.0), "dg-4": (0.04, 7.0), "as-2": (0.08, 4.5),
               "as-8": (0.01, 5.0), "sg-2": (0.09, 5.5), "sg-8": (0.03, 6.0)}
    rows = [{"model": "m", "method": label, "attributes": "skin_tone", "target": "uniform", "prompt": None,
             "labeler": "synthfaces-eval", "status": "done", "n": 1000, "n_valid": 1000, "fd": fd, "fd_lo": 0.0,
             "fd_hi": fd + 0.05, "kl": fd, "fid": fid + 10, "fid_target": fid, "fid_extractor": "synthfaces",
             "seconds": 100.0, "cell_id": label} for label, (fd, fid) in numbers.items()]
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    (run / "suite.json").write_text(json.dumps({"methods": methods, "settings": [
        {"attributes": ["skin_tone"], "target": "uniform"}]}))
    table = sweep.main([str(run), "--fd", "0.05", "0.1", "--markdown", str(tmp_path / "s.md"),
                        "--json", str(tmp_path / "s.json")])
    (setting,) = table["settings"]
    assert list(setting["curves"]) == ["none", "distribution_guidance", "distribution_guidance (push assign)",
                                       "sample_guidance"]
    assert [p["scale"] for p in setting["curves"]["distribution_guidance (push assign)"]] == [2.0, 8.0]
    lowest = {c: {lv: (b["fid"] if b else None) for lv, b in per["synthfaces"].items()}
              for c, per in setting["lowest_fid"].items()}
    assert lowest == {"none": {"0.05": None, "0.1": None}, "distribution_guidance": {"0.05": 7.0, "0.1": 7.0},
                      "distribution_guidance (push assign)": {"0.05": 5.0, "0.1": 4.5},
                      "sample_guidance": {"0.05": 6.0, "0.1": 5.5}}
    verdicts = {(v["curve"], v["fd_level"]): v["passed"] for v in setting["verdicts"]}
    assert verdicts == {("distribution_guidance", 0.05): False, ("distribution_guidance", 0.1): False,
                        ("distribution_guidance (push assign)", 0.05): True,
                        ("distribution_guidance (push assign)", 0.1): True}
    assert "| distribution_guidance (push assign) | 5.00 (s=8) | 4.50 (s=2) |" in (tmp_path / "s.md").read_text()
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(table))
    with pytest.raises(SystemExit) as exit_:
        sweep.main([str(tmp_path / "missing")])
    assert exit_.value.code == 2


def test_assign_churn_counts_split_changes_on_the_zoo_model(tmp_path):
    churn = script("assign_churn")
    args = ["--attributes", "skin_tone", "eyeglasses", "--seeds", "16", "--steps", "10", "--scale", "4"]
    redecided = churn.main([*args, "--json", str(tmp_path / "assign.json")])
    kept = churn.main([*args, "--push", "assign_once"])
    assert redecided["guided_steps"] == kept["guided_steps"] == 8  # stop 0.8 of 10 steps
    assert len(redecided["changed_per_step"]) == 7
    assert max(redecided["changed_per_step"]) <= redecided["samples_ever_changed"] <= 16
    assert kept["samples_ever_changed"] == 0 and kept["changed_per_step"] == [0] * 7
    assert json.loads((tmp_path / "assign.json").read_text()) == redecided
