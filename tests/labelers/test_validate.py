"""`diffaudit labeler validate` on real photos (scikit-image's LFW subset and astronaut).

The labeler under test is a tiny real one whose behaviour can be checked by hand: "brightness" is
dark/bright by mean pixel value against a threshold, and an image whose pixel variance is near zero
is invalid ("flat image"). The ground truth is computed independently of it, from the PNG bytes, by
thresholding at the median (not the labeler's threshold), so the labeler makes real mistakes.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from audit.cli import app
from audit.labelers.base import Labeler, LabelResult
from audit.labelers.validation import find_validation
from audit.registry import LABELERS, register_labeler

skimage_data = pytest.importorskip("skimage.data")


class BrightnessLabeler(Labeler):
    name = "brightness-test"
    source = "mean pixel value (test)"
    attributes = {"brightness": ["dark", "bright"]}

    def __init__(self, threshold: float = 0.5, device: str = "cpu"):
        self.threshold = threshold

    def label(self, images):
        x = images.double().reshape(len(images), -1).numpy()
        bright = x.mean(1) > self.threshold
        valid = x.var(1) > 1e-6
        probs = np.stack([~bright, bright], 1).astype(np.float32)
        return LabelResult(probs={"brightness": probs}, valid=valid,
                           reasons=[None if v else "flat image" for v in valid])


@pytest.fixture(autouse=True)
def registered(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFAUDIT_CACHE", str(tmp_path / "cache"))
    register_labeler("brightness-test", BrightnessLabeler)
    yield
    LABELERS.pop("brightness-test", None)


def lfw_uint8() -> np.ndarray:
    patches = np.asarray(skimage_data.lfw_subset(), dtype=np.float64)
    return (patches * (255 if patches.max() <= 1 else 1)).round().astype(np.uint8)  # [200, 25, 25]


@pytest.fixture
def lfw_dir(tmp_path):
    """200 LFW PNGs (faces 0..99, non-faces 100..199) with brightness truth at the median."""
    patches = lfw_uint8()
    means = patches.reshape(200, -1).mean(1) / 255
    median = np.median(means)
    root = tmp_path / "lfw"
    root.mkdir()
    lines = []
    for i, patch in enumerate(patches):
        Image.fromarray(patch).save(root / f"{i:03d}.png")
        lines.append({"file_name": f"{i:03d}.png", "brightness": "bright" if means[i] > median else "dark",
                      "kind": "face" if i < 100 else "nonface"})
    lines[5]["brightness"] = None  # unknown: left out of the confusion, still counted for invalid rates
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root, patches, lines


def expected(patches, lines, threshold=0.5):
    """The confusion and per-kind accuracy, computed from the uint8 patches directly."""
    x = patches.reshape(len(patches), -1).astype(np.float64) / 255
    predicted = (x.mean(1) > threshold).astype(int)
    valid = x.var(1) > 1e-6
    confusion = np.zeros((2, 2), int)
    correct = {"face": [0, 0], "nonface": [0, 0]}
    for i, row in enumerate(lines):
        if row["brightness"] is None or not valid[i]:
            continue
        truth = ["dark", "bright"].index(row["brightness"])
        confusion[truth, predicted[i]] += 1
        correct[row["kind"]][0] += int(truth == predicted[i])
        correct[row["kind"]][1] += 1
    return confusion, {k: c / n for k, (c, n) in correct.items()}, valid


def run(*args):
    result = CliRunner().invoke(app, ["labeler", "validate", *args])
    return result.exit_code, result.stdout, result.stderr


def test_validate_measures_confusion_accuracy_by_group_and_invalid_rates(lfw_dir, tmp_path):
    root, patches, lines = lfw_dir
    confusion, by_kind, valid = expected(patches, lines)
    assert (~valid).sum() >= 1  # LFW has flat (constant) non-face patches: real invalid images
    assert valid[:100].all()
    code, out, err = run("brightness-test", "--data", str(root))
    assert code == 0, err
    stored = sorted((tmp_path / "cache" / "labelers" / "brightness-test").glob("*.json"))
    assert len(stored) == 1 and f"saved {stored[0]}" in out
    record = json.loads(stored[0].read_text())
    entry = record["attributes"]["brightness"]
    assert entry["classes"] == ["dark", "bright"]
    assert entry["confusion"] == confusion.tolist()
    assert entry["n"] == confusion.sum() == valid.sum() - (1 if valid[5] else 0)
    assert entry["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert 0.5 < entry["accuracy"] < 1  # threshold 0.5 vs the median ~0.40: real mistakes
    for kind in ("face", "nonface"):
        assert entry["by_group"]["kind"][kind]["accuracy"] == pytest.approx(by_kind[kind])
    assert record["invalid_by_group"]["kind"]["face"] == {"n": 100, "invalid": 0, "rate": 0.0}
    nonface = record["invalid_by_group"]["kind"]["nonface"]
    assert nonface["n"] == 100 and nonface["invalid"] == (~valid[100:]).sum()
    assert record["n_invalid"] == (~valid).sum() and record["invalid_reasons"] == {"flat image": int((~valid).sum())}
    provenance = record["provenance"]
    assert provenance["data"] == str(root.resolve()) and provenance["n"] == 200
    assert len(provenance["data_hash"]) == 64 and provenance["date"] and provenance["diffaudit"]
    assert record["options"] == {"threshold": 0.5}
    # the printed table: the confusion rows and the per-group accuracy
    assert "true \\ predicted" in out and "accuracy by kind: face" in out and "invalid by kind:" in out


def test_a_run_built_labeler_gets_the_validation_confusion_and_provenance(lfw_dir):
    from audit.run.context import RunContext

    root, patches, lines = lfw_dir
    suite = SimpleNamespace(labeler_options={})
    plain = RunContext(suite=suite, store=None).labeler("brightness-test")
    assert getattr(plain, "confusion", None) is None
    assert plain.describe()["validation"] == "not validated"

    assert run("brightness-test", "--data", str(root))[0] == 0
    assert run("brightness-test", "--data", str(root), "--option", "threshold=0.3")[0] == 0
    ctx = RunContext(suite=suite, store=None)
    labeler = ctx.labeler("brightness-test")
    confusion, _, _ = expected(patches, lines)
    assert labeler.confusion()["brightness"].tolist() == confusion.tolist()  # threshold 0.5's, not 0.3's
    validation = labeler.describe()["validation"]
    assert validation["n"] == 200 and validation["data"] == str(root.resolve())
    assert validation["file"].endswith(".json") and len(validation["data_hash"]) == 64
    other = RunContext(suite=SimpleNamespace(labeler_options={"brightness-test": {"threshold": 0.3}}), store=None)
    at_03 = other.labeler("brightness-test").confusion()["brightness"]
    assert at_03.tolist() == expected(patches, lines, 0.3)[0].tolist()
    # an explicit default option finds the same validation as none
    assert find_validation("brightness-test", {"threshold": 0.5})[0] == find_validation("brightness-test", {})[0]


def test_label_key_ignores_the_validation(lfw_dir, monkeypatch):
    from audit.run.context import RunContext

    root, _, _ = lfw_dir
    suite = SimpleNamespace(labeler_options={})
    monkeypatch.setattr("audit.run.context.labeler_weights", lambda labeler: None)
    before = RunContext(suite=suite, store=None).label_key("brightness-test")
    assert run("brightness-test", "--data", str(root))[0] == 0
    after_ctx = RunContext(suite=suite, store=None)
    assert "validation" in after_ctx.labeler("brightness-test").describe()
    assert after_ctx.label_key("brightness-test") == before


def write(root, rows, images=()):
    root.mkdir(exist_ok=True)
    for name in images:
        Image.fromarray(lfw_uint8()[0]).save(root / name)
    (root / "metadata.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "not found"),
    ("no_metadata", "metadata.jsonl"),
    ("absent_file", "file 'b.png' not found"),
    ("unreadable", "cannot read image 'a.png'"),
    ("duplicate", "duplicate file_name 'a.png'"),
    ("unknown_class", "brightness 'grey' is not a class labeler brightness-test knows; allowed: dark, bright"),
    ("unlabelled_attribute", "labels none of the attributes in metadata.jsonl (it labels: brightness; "
                             "the metadata has: gender)"),
    ("unknown_labeler", "unknown labeler"),
    ("bad_option", "labeler brightness-test:"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case, message):
    root = tmp_path / "d"
    labeler, extra = "brightness-test", []
    if case == "no_metadata":
        root.mkdir()
    elif case == "absent_file":
        write(root, [{"file_name": "a.png", "brightness": "dark"}, {"file_name": "b.png"}], ["a.png"])
    elif case == "unreadable":
        write(root, [{"file_name": "a.png", "brightness": "dark"}])
        (root / "a.png").write_bytes(b"not a png")
    elif case == "duplicate":
        write(root, [{"file_name": "a.png"}, {"file_name": "a.png"}], ["a.png"])
    elif case == "unknown_class":
        write(root, [{"file_name": "a.png", "brightness": "grey"}], ["a.png"])
    elif case == "unlabelled_attribute":
        write(root, [{"file_name": "a.png", "gender": "female"}], ["a.png"])
    elif case in ("unknown_labeler", "bad_option"):
        write(root, [{"file_name": "a.png", "brightness": "dark"}], ["a.png"])
        labeler, extra = ("no-such-labeler", []) if case == "unknown_labeler" else (labeler, ["--option", "nope=1"])
    code, out, err = run(labeler, "--data", str(root), *extra)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "cache" / "labelers").exists()


def test_skin_tone_on_astronaut(tmp_path):
    """The installed skin_tone labeler on the astronaut photo. Hand check: Eileen Collins is a
    light-skinned woman; stone calls the warm-lit face Monk 6 ('medium'), which the validation
    records as a miss."""
    pytest.importorskip("stone")
    root = tmp_path / "astronaut"
    root.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut.png")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "astronaut.png", "skin_tone_group": "light",
                                                     "gender": "female"}) + "\n")
    code, out, err = run("skin_tone", "--data", str(root))
    assert code == 0, err
    record = json.loads(next((tmp_path / "cache" / "labelers" / "skin_tone").glob("*.json")).read_text())
    entry = record["attributes"]["skin_tone_group"]
    assert record["n_invalid"] == 0 and entry["classes"] == ["light", "medium", "dark"]
    assert entry["confusion"] == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert entry["by_group"]["gender"]["female"] == {"n": 1, "accuracy": 0.0}
    assert "monk" not in record["attributes"]  # the metadata has no monk column


def test_error_aware_estimate_uses_the_validated_confusion(lfw_dir):
    """A cell labelled by the validated labeler gets an error-aware estimate (it had none before),
    built from the measured confusion."""
    import pandas as pd

    from audit.metrics.cell import fairness_metrics
    from audit.run.context import RunContext
    from audit.spec import SettingSpec

    root, patches, lines = lfw_dir
    x = patches.reshape(200, -1).astype(np.float64) / 255
    keep = x.var(1) > 1e-6
    bright = (x.mean(1) > 0.5)[keep].astype(float)
    labels = pd.DataFrame({"p:brightness:dark": 1 - bright, "p:brightness:bright": bright,
                           "valid": np.ones(len(bright), bool), "reason": [""] * len(bright)})
    setting = SettingSpec(attributes=["brightness"], classes={"brightness": ["dark", "bright"]})
    suite = SimpleNamespace(labeler_options={})
    before = fairness_metrics(labels, RunContext(suite=suite, store=None).labeler("brightness-test"), setting, 0.05)
    assert "error_aware" not in before
    assert run("brightness-test", "--data", str(root))[0] == 0
    after = fairness_metrics(labels, RunContext(suite=suite, store=None).labeler("brightness-test"), setting, 0.05)
    confusion, _, _ = expected(patches, lines)
    rows = confusion / confusion.sum(1, keepdims=True)
    assert np.allclose(after["error_aware"]["confusion"], rows)
    # the labeler calls bright images dark half the time, so the corrected share of bright is higher
    assert after["error_aware"]["p"][1] > after["p_hat"][1]
