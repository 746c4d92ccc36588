"""Fabricated run directories for the report tests: real files (PNG images, parquet, JSON, a real
SQLite index through RunStore.index_cell, results.csv/json) with plausible numbers, no model runs.

`make_run(out)` builds by default 2 models x 3 methods x 2 settings, one of the models text
conditioned with a hostile prompt, hostile model/labeler names in the results and manifests, and
the `prompt` method not applicable to the unconditional model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from html.parser import HTMLParser
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from scipy import stats

from audit.files import atomic_write_json
from audit.results import CellResult, Manifest
from audit.run.suite import RESULT_COLUMNS
from audit.store import RunStore

XSS_PROMPT = "<script>window.__xss=1</script>"
XSS_MODEL = 't2i"><img src=x onerror="window.__xss=2">'
XSS_LABELER = 'eval-b"><img src=x onerror="window.__xss=2">'
XSS_DESCRIPTION = 'Fixture audit <img src=x onerror="window.__xss=3"> & friends $x$'
CLASSES = {"skin_tone": ["light", "dark"], "eyeglasses": ["no", "yes"], "hair_length": ["short", "long"],
           "smile": ["no", "yes"]}
BIASED = {"skin_tone": 0.15, "eyeglasses": 0.2, "hair_length": 0.45, "smile": 0.5}
DEFAULT_METHODS = [{"name": "none", "label": None, "params": {}},
                   {"name": "prompt", "label": None, "params": {}},
                   {"name": "distribution_guidance", "label": None, "params": {"scale": 2.0, "loss": "chi2"}}]
JOINT_AIM = [0.28, 0.24, 0.2, 0.28]
PROMPT_SHIFT = 0.12  # prompt i of a text model draws the second class of each attribute 0.12 * i more often
OCCUPATIONS = ["a photo of a doctor", "a photo of a nurse", XSS_PROMPT, "a photo of a $CEO$ & <b>boss</b>"]
DEFAULT_SETTINGS = [{"attributes": ["skin_tone"], "target": "uniform", "classes": None},
                    {"attributes": ["skin_tone", "eyeglasses"], "target": "uniform", "classes": None}]
DEFAULT_MODELS = [{"name": "synthfaces-ddpm", "source": "zoo:synthfaces-ddpm", "text": False},
                  {"name": XSS_MODEL, "source": "zoo:synthfaces-t2i", "text": True}]


def _face_png(size: int, dark: bool, glasses: bool, variant: int) -> bytes:
    image = Image.new("RGB", (size, size), (200 - 9 * variant, 214, 230))
    draw = ImageDraw.Draw(image)
    s = size / 32
    skin = (92, 62, 45) if dark else (236, 196, 168)
    hair = [(30, 24, 20), (120, 80, 40), (215, 180, 90), (150, 150, 150)][variant % 4]
    draw.ellipse([7 * s, 3 * s, 25 * s, 17 * s], fill=hair)
    draw.ellipse([8 * s, 6 * s, 24 * s, 27 * s], fill=skin)
    draw.ellipse([11 * s, 13 * s, 13 * s, 15 * s], fill=(20, 20, 20))
    draw.ellipse([19 * s, 13 * s, 21 * s, 15 * s], fill=(20, 20, 20))
    draw.arc([12 * s, 17 * s, 20 * s, 23 * s], 20, 160, fill=(120, 30, 30), width=max(1, int(s)))
    if glasses:
        draw.rectangle([9.5 * s, 12 * s, 14.5 * s, 16 * s], outline=(10, 10, 10), width=max(1, int(s)))
        draw.rectangle([17.5 * s, 12 * s, 22.5 * s, 16 * s], outline=(10, 10, 10), width=max(1, int(s)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _joint_names(attributes: list[str]) -> list[str]:
    return ["&".join(c) for c in product(*(CLASSES[a] for a in attributes))]


def _target(setting: dict) -> list[float]:
    k = len(_joint_names(setting["attributes"]))
    return [1 / k] * k if setting["target"] == "uniform" else list(setting["target"])


def _wilson(count: int, n: int) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    z, p = 1.96, count / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _metrics_for(labels: pd.DataFrame, attributes: list[str], target: list[float], tolerance: float,
                 error_aware: bool, rng: np.random.Generator) -> dict:
    valid = labels["valid"].to_numpy(bool)
    hard = [labels.loc[valid, [f"p:{a}:{c}" for c in CLASSES[a]]].to_numpy().argmax(1) for a in attributes]
    ks = [len(CLASSES[a]) for a in attributes]
    joint = np.zeros(int(valid.sum()), dtype=int)
    for h, k in zip(hard, ks, strict=True):
        joint = joint * k + h
    k = int(np.prod(ks))
    n_valid = int(valid.sum())
    counts = np.bincount(joint, minlength=k)
    p_hat = counts / max(1, n_valid)
    t = np.asarray(target)
    draws = rng.multinomial(n_valid, p_hat, size=200) / max(1, n_valid)
    fds = np.sqrt(((draws - t) ** 2).sum(1))
    fd = float(np.sqrt(((p_hat - t) ** 2).sum()))
    kl = float(np.sum((p_hat + 1e-6) * np.log((p_hat + 1e-6) / t)))
    chi2, chi2_p = stats.chisquare(counts, t * n_valid)
    se = np.sqrt(np.maximum(p_hat * (1 - p_hat), 0.25 / n_valid) / n_valid)
    per_class = np.maximum(stats.norm.sf((p_hat - (t - tolerance)) / se), stats.norm.sf((t + tolerance - p_hat) / se))
    soft = labels.loc[valid, [f"p:{attributes[0]}:{c}" for c in CLASSES[attributes[0]]]].to_numpy()
    for a in attributes[1:]:
        p = labels.loc[valid, [f"p:{a}:{c}" for c in CLASSES[a]]].to_numpy()
        soft = (soft[:, :, None] * p[:, None, :]).reshape(len(soft), -1)
    p_soft = soft.mean(0)
    reasons = labels.loc[~valid, "reason"].value_counts().to_dict()
    uniform = 1 / k
    nonzero = p_hat[p_hat > 0]
    literature = {"heim_imbalance": float(np.abs(p_hat - uniform).mean()),
                  "deviation_ratio": float(np.abs(p_hat - uniform).max() / (1 - uniform)),
                  "normalized_entropy": float(-(nonzero * np.log(nonzero)).sum() / np.log(k)),
                  "soft_fd": float(np.sqrt(((p_soft - uniform) ** 2).sum()))}
    result = {
        "n": len(labels), "n_valid": n_valid, "invalid_rate": 1 - n_valid / len(labels),
        "classes": _joint_names(attributes), "target": list(target), "invalid_reasons": reasons,
        "counts": counts.tolist(), "p_hat": p_hat.tolist(), "p_soft": p_soft.tolist(),
        "p_intervals": [_wilson(int(c), n_valid) for c in counts],
        "fd": fd, "fd_lo": float(min(fd, np.percentile(fds, 2.5))), "fd_hi": float(max(fd, np.percentile(fds, 97.5))),
        "fd_soft": float(np.sqrt(((p_soft - t) ** 2).sum())), "kl": kl, "kl_reverse": kl * 1.1,
        "literature": literature, "chi2": float(chi2), "chi2_p": float(chi2_p), "tost_p": float(per_class.max()),
        "equivalent": bool(per_class.max() < 0.05), "tost_per_class": per_class.tolist(), "tolerance": tolerance,
        "per_attribute": {a: np.bincount(h, minlength=kk).tolist() for a, h, kk in zip(attributes, hard, ks,
                                                                                         strict=True)},
    }
    if len(attributes) > 1:
        result["small_cells"] = [c for c, n in zip(_joint_names(attributes), counts, strict=True) if n < 10]
    if error_aware:
        p = np.clip(p_hat + rng.normal(0, 0.01, k), 0.001, None)
        p = p / p.sum()
        result["error_aware"] = {"p": p.tolist(), "lo": np.clip(p - 0.05, 0, 1).tolist(),
                                 "hi": np.clip(p + 0.05, 0, 1).tolist(), "fd": float(np.sqrt(((p - t) ** 2).sum())),
                                 "confusion": np.eye(k).tolist()}
    return result


def _kappa(a: np.ndarray, b: np.ndarray, k: int) -> float:
    if len(a) == 0:
        return float("nan")
    observed = float((a == b).mean())
    expected = float(sum((a == c).mean() * (b == c).mean() for c in range(k)))
    return (observed - expected) / (1 - expected) if expected < 1 else 1.0


def _cell_id(model: str, method: str, attributes: list[str], prompt: str | None, seed: int) -> str:
    digest = hashlib.sha256(json.dumps([model, method, attributes, prompt, seed]).encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")
    tail = "" if prompt is None else "__" + re.sub(r"[^a-z0-9]+", "-", prompt.lower())[:40].strip("-")
    return f"{safe}__{method}__{'x'.join(attributes)}{tail}__{digest}"


def make_run(out: Path, *, models=None, methods=None, settings=None, samples: int = 40,
             labelers=("synthfaces-eval", XSS_LABELER), image_size: int = 32, seed: int = 0,
             tolerance: float = 0.05, name: str = "fixture-suite", description: str = XSS_DESCRIPTION,
             with_fid: bool = True) -> Path:
    """Write a complete run directory under `out` and return it."""
    models = models or DEFAULT_MODELS
    methods = methods or DEFAULT_METHODS
    settings = settings or DEFAULT_SETTINGS
    labelers = list(labelers)
    rng = np.random.default_rng(seed)
    store = RunStore(out)
    variants = {(d, g, v): _face_png(image_size, d, g, v) for d in (False, True) for g in (False, True)
                for v in range(4)}
    suite = {"path": "fixture.yaml", "name": name, "description": description,
             "models": [{"name": m["name"], "source": m["source"], "revision": None, "steps": 25,
                         "guidance_scale": 2.0 if m["text"] else 1.0, "negative_prompt": "",
                         "prompts": _prompts(m) if m["text"] else None, "prompts_file": None, "dtype": "float32"}
                        for m in models],
             "methods": methods, "settings": settings, "samples": samples, "batch_size": 16, "seed": seed,
             "labelers": labelers, "probe_labeler": "synthfaces-pseudo", "probe": {"n": 1000, "batch_size": 64},
             "metrics": ["fairness", "fid"] if with_fid else ["fairness"],
             "fid": {"extractor": "synthfaces", "reference": "synthfaces:biased", "n": 1000},
             "tolerance": tolerance, "phrases": {}, "clip_model": None}
    atomic_write_json(store.out / "suite.json", suite)
    rows = []
    cells = [(mi, model, pi, prompt) for mi, model in enumerate(models) for pi, prompt in enumerate(_prompts(model))]
    for mi, model, pi, prompt in cells:
        for method in methods:
            display = method.get("label") or method["name"]
            scale = method.get("params", {}).get("scale")
            for setting in settings:
                attributes = setting["attributes"]
                target = _target(setting)
                cell_id = _cell_id(model["name"], display, attributes, prompt, seed)
                base = {"model": model["name"], "method": display, "attributes": "x".join(attributes),
                        "target": "uniform" if setting["target"] == "uniform" else "/".join(f"{v:g}" for v in target),
                        "prompt": prompt, "n": samples, "cell_id": cell_id}
                if method["name"] == "prompt" and not model["text"]:
                    reason = "prompt debiasing needs a text-conditioned model"
                    store.index_cell({**base, "suite": name, "status": "not_applicable", "reason": reason,
                                      "seconds": None, "images_per_s": None})
                    rows.append({**base, "labeler": None, "status": "not_applicable"})
                    continue
                rows.extend(_write_cell(store, base, model, method, setting, labelers, target, prompt, samples,
                                        seed, tolerance, scale, variants, rng, mi, name, with_fid,
                                        shift=PROMPT_SHIFT * pi))
    frame = pd.DataFrame(rows).reindex(columns=RESULT_COLUMNS)
    frame.to_csv(store.out / "results.csv", index=False)
    atomic_write_json(store.out / "results.json", json.loads(frame.to_json(orient="records")))
    return store.out


def _prompts(model: dict) -> list[str | None]:
    """A text model's prompts (default: the hostile one), [None] for an unconditional model."""
    return list(model.get("prompts") or [XSS_PROMPT]) if model["text"] else [None]


def _write_cell(store, base, model, method, setting, labelers, target, prompt, samples, seed, tolerance, scale,
                variants, rng, model_index, suite_name, with_fid, shift: float = 0.0) -> list[dict]:
    cell_id, attributes = base["cell_id"], setting["attributes"]
    cell_dir = store.cell_dir(cell_id)
    strength = {"none": 0.0, "prompt": 0.7}.get(method["name"], 1 - math.exp(-(scale or 1.0)))
    truth = {}
    for a in CLASSES:
        p_second = min(0.9, BIASED[a] + shift) + (0.5 - min(0.9, BIASED[a] + shift)) * strength * (a in attributes)
        truth[a] = (rng.random(samples) < p_second).astype(int)
    seeds = list(range(seed, seed + samples))
    images = cell_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(seeds):
        (images / f"{s:08d}.png").write_bytes(variants[(bool(truth["skin_tone"][i]), bool(truth["eyeglasses"][i]),
                                                        s % 4)])
    sample_prompts = [None] * samples if prompt is None else [
        f"{prompt} with {'dark' if truth['skin_tone'][i] else 'light'} skin" if method["name"] == "prompt" else prompt
        for i in range(samples)]
    pd.DataFrame({"seed": seeds, "prompt": sample_prompts, "batch": [i // 16 for i in range(samples)],
                  "image": [f"images/{s:08d}.png" for s in seeds]}).to_parquet(cell_dir / "samples.parquet",
                                                                               index=False)
    results = {"status": "done", "labelers": {}}
    hard = {}
    for li, labeler in enumerate(labelers):
        invalid = rng.random(samples) < (0.02 + 0.03 * li)
        columns = {"seed": seeds, "valid": ~invalid, "reason": np.where(invalid, "no face", "")}
        for a, classes in CLASSES.items():
            wrong = rng.random(samples) < 0.05
            predicted = np.where(wrong, 1 - truth[a], truth[a])
            confidence = rng.uniform(0.6, 0.99, samples)
            probs = np.where(predicted[:, None] == np.arange(2), confidence[:, None], 1 - confidence[:, None])
            for k, c in enumerate(classes):
                columns[f"p:{a}:{c}"] = probs[:, k].astype(np.float32)
            hard.setdefault(a, {})[labeler] = (predicted, ~invalid)
        labels = pd.DataFrame(columns)
        labels.to_parquet(cell_dir / f"labels-{labeler}.parquet", index=False)
        results["labelers"][labeler] = _metrics_for(labels, attributes, target, tolerance, li == 0, rng)
    if len(labelers) > 1:
        a_name, b_name = labelers[0], labelers[1]
        results["agreement"] = {}
        for a in attributes:
            (pa, va), (pb, vb) = hard[a][a_name], hard[a][b_name]
            both = va & vb
            results["agreement"][a] = {f"{a_name}|{b_name}": _kappa(pa[both], pb[both], 2)}
    overhead = {"none": 1.0, "prompt": 1.02}.get(method["name"], 1.6 + 0.1 * (scale or 1))
    seconds = samples * 0.01 * (1 + model_index) * overhead
    fid_value = 6.0 + 9.0 * strength ** 2 + model_index + float(rng.normal(0, 0.3))
    # as the runner measures it for a synthfaces reference: against one drawn with the target's
    # distribution, where balance helps rather than hurts
    fid_target = round(fid_value - 9.0 * strength ** 2 + 12.0 * (1 - strength) ** 2 + 0.5, 6)
    if with_fid:
        results["fid"] = {"value": fid_value, "target_value": fid_target, "extractor": "synthfaces",
                          "reference": "synthfaces:biased", "n_reference": 1000, "n": samples}
    results["clip_score"] = ({"value": 27.5 - 2 * strength, "lo": 27.0 - 2 * strength, "hi": 28.0 - 2 * strength,
                              "model": "local-clip"} if model["text"] else {"value": None,
                                                                            "reason": "unconditional model"})
    results["cost"] = {"seconds": seconds, "images": samples, "images_per_s": samples / seconds}
    results["guidance"] = {"clipped_steps": 3 if method["name"].endswith("guidance") else 0, "skipped_nonfinite": 0}
    atomic_write_json(cell_dir / "metrics.json", CellResult.model_validate(results).model_dump(mode="json"))
    method_config = {"name": method["name"], **method.get("params", {})}
    if method["name"].endswith("guidance"):
        # as the runner records them: a joint cell's calibration moved the aim off the target
        method_config["target"] = target
        method_config["aim"] = JOINT_AIM if len(attributes) > 1 else target
        method_config["probes"] = [{"model_id": model["source"], "revision": None, "labeler": "synthfaces-pseudo",
                                    "attribute": a, "val_accuracy": [0.91, 0.97, 0.99]} for a in attributes]
    manifest = {
        "cell_id": cell_id, "suite": suite_name, "created": "2026-11-24T12:00:00Z",
        "model": {"name": model["name"], "source": model["source"], "id": f"{model['source']}/{model['name']}",
                  "revision": "0123abcd", "dtype": "float32", "info": {}},
        "scheduler": {"class": "DDIMScheduler", "timestep_spacing": "trailing", "prediction_type": "v_prediction",
                      "num_train_timesteps": 1000},
        "steps": 25, "guidance_scale": 2.0 if model["text"] else 1.0, "device": "cpu", "prompt": prompt,
        "negative_prompt": "", "seeds": {"first": seed, "count": samples, "rule": "image i uses seed first+i"},
        "batch_size": 16, "method": method_config,
        "setting": {"attributes": attributes, "classes": _joint_names(attributes), "target": target},
        "labelers": {name: {"name": name, "source": f"fixture labeler {name}",
                            "attributes": {a: CLASSES[a] for a in CLASSES}} for name in labelers},
        "probe_labeler": "synthfaces-pseudo",
        "versions": {"diffaudit": "0.1.0", "torch": "2.13.0", "diffusers": "0.35.0", "transformers": "5.0.0",
                     "python": "3.11.7", "platform": "Linux"},
    }
    atomic_write_json(cell_dir / "manifest.json", Manifest.model_validate(manifest).model_dump(mode="json"))
    store.index_cell({**base, "suite": suite_name, "status": "done", "reason": None, "seconds": seconds,
                      "images_per_s": samples / seconds},
                     [(name, "fd", m["fd"], m["fd_lo"], m["fd_hi"]) for name, m in results["labelers"].items()])
    rows = []
    for labeler, m in results["labelers"].items():
        rows.append({**base, "labeler": labeler, "status": "done", "n_valid": m["n_valid"], "fd": m["fd"],
                     "fd_lo": m["fd_lo"], "fd_hi": m["fd_hi"], "fd_soft": m["fd_soft"], "kl": m["kl"],
                     "chi2_p": m["chi2_p"], "tost_p": m["tost_p"], "equivalent": m["equivalent"],
                     "error_aware_fd": (m.get("error_aware") or {}).get("fd"), **m["literature"],
                     "fid": fid_value if with_fid else None, "fid_target": fid_target if with_fid else None,
                     "fid_extractor": "synthfaces" if with_fid else None,
                     "clip_score": results["clip_score"]["value"], "seconds": seconds,
                     "images_per_s": samples / seconds})
    return rows


@pytest.fixture(scope="session")
def fixture_run(tmp_path_factory) -> Path:
    """The default 2 models x 3 methods x 2 settings run (10 cells measured, 2 not applicable)."""
    return make_run(tmp_path_factory.mktemp("run") / "out")


@pytest.fixture(scope="session")
def prompts_run(tmp_path_factory) -> Path:
    """A text model audited under four prompts (one hostile), none vs distribution guidance, skin tone."""
    models = [{"name": "t2i-occupations", "source": "zoo:synthfaces-t2i", "text": True, "prompts": OCCUPATIONS}]
    methods = [DEFAULT_METHODS[0], DEFAULT_METHODS[2]]
    return make_run(tmp_path_factory.mktemp("prompts") / "out", models=models, methods=methods,
                    settings=[DEFAULT_SETTINGS[0]], samples=60, labelers=["synthfaces-eval"], name="occupations")


@pytest.fixture
def run_without_fid_target(fixture_run, tmp_path) -> Path:
    """A copy of fixture_run as a run made before results recorded FID to target."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(fixture_run, old, ignore=shutil.ignore_patterns("report"))
    records = json.loads((old / "results.json").read_text())
    for r in records:
        r.pop("fid_target", None)
    (old / "results.json").write_text(json.dumps(records))
    return old


@pytest.fixture(scope="session")
def fixture_report(fixture_run) -> Path:
    from audit.report.html import write_report

    return write_report(fixture_run)


@pytest.fixture(scope="session")
def large_run(tmp_path_factory) -> Path:
    """24 cells x 1,000 images (2 models x 3 methods, two of them a scale sweep, x 4 settings)."""
    models = [{"name": "synthfaces-ddpm", "source": "zoo:synthfaces-ddpm", "text": False},
              {"name": "synthfaces-t2i", "source": "zoo:synthfaces-t2i", "text": True}]
    methods = [{"name": "none", "label": None, "params": {}},
               {"name": "distribution_guidance", "label": "dg-s1", "params": {"scale": 1.0}},
               {"name": "distribution_guidance", "label": "dg-s4", "params": {"scale": 4.0}}]
    settings = [{"attributes": [a], "target": "uniform", "classes": None} for a in ("skin_tone", "eyeglasses",
                                                                                    "hair_length")]
    settings.append({"attributes": ["skin_tone", "eyeglasses"], "target": "uniform", "classes": None})
    return make_run(tmp_path_factory.mktemp("large") / "out", models=models, methods=methods, settings=settings,
                    samples=1000, labelers=["synthfaces-eval"], name="quickstart-sized")


class Page(HTMLParser):
    """Collects what the tests look at: element counts, attributes, table rows and visible text."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._skip = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())


@pytest.fixture(scope="session")
def make_run_dir():
    """The run-directory factory (see make_run) for tests that build their own variant."""
    return make_run


@pytest.fixture(scope="session")
def hostile() -> dict[str, str]:
    """The hostile strings the default fixture plants in names, prompts and descriptions."""
    return {"prompt": XSS_PROMPT, "model": XSS_MODEL, "labeler": XSS_LABELER, "description": XSS_DESCRIPTION}


@pytest.fixture(scope="session")
def parse_html():
    """HTML -> Page (tags with attributes, visible text), with the standard library's parser."""
    return Page
