"""Suite -> cells -> generate -> label -> measure -> index, locally or on Ray.

A cell is done when its metrics.json was measured on the images its seeds have now and under the
suite's measurement keys (model revision, seeds, labeler configurations, tolerance, FID and CLIP
specs), HELM-style. Generation resumes seed by seed; labels are cached per (image, label key); so
re-running a suite after a crash, with an added labeler, a changed option or more or fewer samples
redoes only what is missing, changed or no longer matches. A cell whose images came from other
weights of its model is moved to OUT/superseded/ and generated again. One process at a time writes
an output directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audit.spec import DEFAULT_PROMPT, Cell, Suite, SuiteError, plan, prompt_slug
from audit.stages import reached
from audit.store import RunStore, UnreadableImageError, atomic_path, atomic_write_json, image_problem, inside

RESULT_COLUMNS = ["model", "method", "attributes", "target", "prompt", "labeler", "status", "n", "n_valid",
                  "invalid_reasons", "fd", "fd_lo", "fd_hi", "fd_floor", "fd_corrected", "fd_soft", "kl", "chi2_p",
                  "chi2_method", "tost_p", "equivalent", "verdict", "samples_needed",
                  "error_aware_fd", "error_aware_fd_lo", "error_aware_fd_hi",
                  "fid", "fid_target", "fid_extractor", "clip_score", "seconds", "images_per_s",
                  "cell_id"]


def result_columns(suite: Suite) -> list[str]:
    """RESULT_COLUMNS, with fid[X] and fid_target[X] after fid_extractor for every FID extractor
    beyond the primary one."""
    extra = [f"{c}[{spec.extractor}]" for spec in suite.fid[1:] for c in ("fid", "fid_target")] \
        if "fid" in suite.metrics else []
    at = RESULT_COLUMNS.index("fid_extractor") + 1
    return RESULT_COLUMNS[:at] + extra + RESULT_COLUMNS[at:]


@dataclass
class RunContext:
    suite: Suite
    store: RunStore
    device: str = "cpu"
    adapters: dict = field(default_factory=dict)
    labelers: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)
    fid_refs: dict = field(default_factory=dict)
    progress: object | None = None
    log: object = print
    measure_only: bool = False  # re-measure cells whose images exist; generate nothing
    revisions: dict = field(default_factory=dict)
    label_keys: dict = field(default_factory=dict)
    fid_checked: bool = False

    def adapter(self, cell: Cell):
        from audit.models.loading import load_model

        if cell.model.name not in self.adapters:
            self.adapters[cell.model.name] = load_model(cell.model, device=self.device)
        return self.adapters[cell.model.name]

    def labeler(self, name: str):
        from audit.labelers.validation import attach_validation
        from audit.registry import LABELERS, make_labeler, resolve, suite_params

        if name not in self.labelers:
            takes = suite_params(resolve(LABELERS, name, "labeler"))
            options = {"device": self.device} if takes is not None and "device" in takes else {}  # run's device
            options.update(self.suite.labeler_options.get(name, {}))
            try:
                labeler = make_labeler(name, **options)
            except TypeError as e:
                raise SuiteError(f"labeler_options.{name}: {e}") from None
            # a stored `diffaudit labeler validate` of this labeler and options gives it confusion()
            self.labelers[name] = attach_validation(labeler, name, self.suite.labeler_options.get(name, {}))
        return self.labelers[name]

    def revision(self, cell: Cell) -> str | None:
        """The revision of the cell's model weights (hashed, not loaded, where it can be)."""
        from audit.models.loading import model_revision

        name = cell.model.name
        if name not in self.revisions:
            if name in self.adapters or cell.model.source.startswith("custom:"):
                self.revisions[name] = self.adapter(cell).revision
            else:
                self.revisions[name] = model_revision(cell.model)
        return self.revisions[name]

    def label_key(self, name: str) -> str:
        """A digest of everything a labeler's labels depend on: its name, its suite options, what it
        says it is (source and versions, classes, prompts), the content of its weight files, and
        the image checks label_cell applies. Cached labels are reused only under the same key."""
        if name not in self.label_keys:
            labeler = self.labeler(name)
            # a labeler's validation says how good its labels are, not what they are: not in the key
            described = {k: v for k, v in labeler.describe().items() if k != "validation"}
            self.label_keys[name] = digest({"labeler": name, "options": self.suite.labeler_options.get(name, {}),
                                            "describe": described,
                                            "weights": labeler_weights(labeler),
                                            "checks": IMAGE_CHECKS})
        return self.label_keys[name]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def labeler_weights(labeler) -> str | None:
    """The content hash of a labeler's weights, where it names them (a zoo labeler's directory, a
    CLIP's model_path); None for labelers whose describe() carries their package version only."""
    from audit.models.loading import directory_digest

    for attribute in ("directory", "model_path", "weights_path"):
        value = getattr(labeler, attribute, None)
        if isinstance(value, str | Path) and str(value) and Path(value).expanduser().exists():
            return directory_digest(Path(value).expanduser())
    return None


# -- probes and methods ------------------------------------------------------------------------

def probe_dir(ctx: RunContext, cell: Cell, attribute: str) -> Path:
    """A probe the model's source ships (the zoo's), if it was trained on these weights and this
    guidance scale; else one trained on demand and cached in OUT/probes."""
    from audit.probes.probe import Probe

    model, labeler = cell.model, ctx.suite.probe_labeler
    revision = ctx.adapter(cell).revision
    folder = model.shipped_probes(labeler, cell.prompt)
    shipped = None if folder is None else folder / attribute
    if shipped is not None and Probe.saved(shipped):
        meta = Probe.load(shipped).meta  # a damaged shipped probe is a one-line ProbeError
        trained_on = (meta.get("revision"), float(meta.get("guidance_scale", 1.0)))
        if trained_on == (revision, float(model.guidance_scale)):
            return shipped
        ctx.log(f"the shipped {attribute} probe was trained on {model.source} revision {trained_on[0]} with "
                f"guidance scale {trained_on[1]:g}, not {revision} with {model.guidance_scale:g}: "
                "training one for this setting")
    key = f"{model.name}/{labeler}/steps{model.steps}-cfg{model.guidance_scale:g}"
    if revision:
        key += f"-rev-{re.sub(r'[^A-Za-z0-9._-]+', '-', revision)[:40]}"
    if cell.prompt is not None:  # h depends on the prompt: one probe set per prompt
        digest = hashlib.sha256(cell.prompt.encode()).hexdigest()[:8]
        key += f"/prompt-{prompt_slug(cell.prompt)[:32].strip('-')}-{digest}"
    return inside(ctx.store.out, Path("probes") / key / attribute)


def get_probes(ctx: RunContext, cell: Cell) -> list:
    from audit.probes.probe import Probe
    from audit.probes.train import train_probes

    attributes = cell.setting.attributes
    labeler = ctx.labeler(ctx.suite.probe_labeler)
    # Train every attribute the suite guides (that the probe labeler labels) at once: one
    # sampling pass serves them all. Always on the deterministic sampler, whatever the model's eta:
    # a probe reads x_t (through h), and DDIM gives x_t the same distribution for every eta.
    wanted = list(dict.fromkeys(a for s in ctx.suite.settings for a in s.attributes if a in labeler.attributes))
    dirs = {a: probe_dir(ctx, cell, a) for a in wanted}
    missing = _probes_to_train(ctx, dirs)
    if missing:
        adapter = ctx.adapter(cell)
        ctx.log(f"training probes for {cell.model.name}: {', '.join(missing)} "
                f"({ctx.suite.probe.n} samples, labeled by {labeler.name})")
        prompts = None
        if adapter.conditional:
            prompts = [cell.prompt or DEFAULT_PROMPT] * ctx.suite.probe.n
        trained = train_probes(adapter, labeler, missing, n=ctx.suite.probe.n, steps=cell.model.steps,
                               batch_size=ctx.suite.probe.batch_size, prompts=prompts,
                               guidance_scale=cell.model.guidance_scale)
        for a, probe in trained.items():
            probe.save(dirs[a])
            reached("probes")
            ctx.log(f"probe {a}: validation accuracy per step min {min(probe.meta['val_accuracy']):.3f} "
                    f"max {max(probe.meta['val_accuracy']):.3f}")
    probes = [Probe.load(dirs[a]).to(ctx.device) for a in attributes]
    for probe in probes:
        accuracy = [a for a in probe.meta.get("val_accuracy", []) if a == a]  # drop NaN
        counts = probe.meta.get("label_counts") or [1]
        chance = max(counts) / max(1, sum(counts))
        if accuracy and (max(accuracy) - chance) / max(1e-9, 1 - chance) < 0.25:  # < 25% fewer errors than majority
            ctx.log(f"warning: the {probe.attribute} probe of {cell.model.name} barely beats chance (validation "
                    f"accuracy <= {max(accuracy):.2f}, majority class {chance:.2f}): h does not encode "
                    f"{probe.attribute} linearly, so guidance on it will have little effect")
    return probes


def _probes_to_train(ctx: RunContext, dirs: dict[str, Path]) -> list[str]:
    """The attributes whose probe must be trained: never saved, or saved in OUT/probes but
    damaged (a cache: trained again, and logged). A damaged probe outside OUT (a shipped one) is an
    error: it belongs to the install, and another probe would guide differently."""
    from audit.probes.probe import Probe, ProbeError

    todo = []
    for attribute, directory in dirs.items():
        problem = Probe.problem(directory) if Probe.saved(directory) else "never trained"
        if problem is None:
            continue
        if problem != "never trained":
            if not directory.is_relative_to(ctx.store.out):
                raise ProbeError(problem)
            ctx.store.log_event(f"probe {attribute} at {directory.relative_to(ctx.store.out)} is damaged, training it "
                                f"again: {problem}")
            ctx.log(f"probe {attribute}: {problem}; training it again")
        todo.append(attribute)
    return todo


def _calibration_of_started_cell(ctx: RunContext, cell: Cell) -> dict | None:
    """The scale (and aim) a killed cell's finished batches were generated with: a resumed cell
    must finish with them even if calibration would now choose others (a changed rule, a
    deleted calibration record)."""
    cell_dir = ctx.store.cell_dir(cell.cell_id)
    manifest = cell_dir / "manifest.json"
    if not manifest.exists() or not any(m["seeds"] for m in ctx.store.batches(cell.cell_id)):
        return None
    method = json.loads(manifest.read_text()).get("method", {})
    if not isinstance(method.get("scale"), int | float):
        return None
    return {"scale": float(method["scale"]), "aim": method.get("aim")}


def unlabeled(labeler, attributes: list[str]) -> list[str]:
    """The attributes a labeler does not label."""
    return [a for a in attributes if a not in labeler.attributes]


def _probe_labeler_gap(ctx: RunContext, cell: Cell) -> str | None:
    """Why a probe-guided cell cannot run: its probe labeler does not label its attributes."""
    if not cell.method_class.needs_probe:
        return None
    labeler = ctx.labeler(ctx.suite.probe_labeler)
    missing = unlabeled(labeler, cell.setting.attributes)
    if missing:
        return (f"probe labeler {labeler.name} does not label {', '.join(missing)}: set probe_labeler "
                f"to one that does")
    return None


# What the runner can supply to a method's constructor: a method lists the names it takes in its
# `supplied` (audit.methods.base.Method); everything else it takes is a suite param.
SUPPLIED_ARGUMENTS = ("target", "attributes", "phrases", "attribute_names", "probes", "labeler")


def supplied_arguments(ctx: RunContext, cell: Cell, factory, params: dict) -> dict:
    """The constructor arguments the method declares in `supplied`, made from the cell: the target
    vector, the attributes, one prompt phrase per joint class (and the attributes named in words),
    h-space probes of the cell's attributes, or a labeler (the method's `labeler` param, default
    the suite's probe_labeler; the param is consumed)."""
    setting, wanted = cell.setting, tuple(getattr(factory, "supplied", ()))
    unknown = [name for name in wanted if name not in SUPPLIED_ARGUMENTS]
    if unknown:
        raise SuiteError(f"methods '{cell.method.display}': its class asks the runner to supply {unknown[0]!r}; "
                         f"the runner supplies {', '.join(SUPPLIED_ARGUMENTS)}")
    args: dict = {}
    if "target" in wanted:
        args["target"] = setting.target_vector()
    if "attributes" in wanted:
        args["attributes"] = list(setting.attributes)
    if "phrases" in wanted:
        args["phrases"] = [" and ".join(ctx.suite.phrase(a, c) for a, c in zip(setting.attributes, combo.split("&"),
                                                                                strict=True))
                           for combo in setting.joint_classes()]
    if "attribute_names" in wanted:
        args["attribute_names"] = " and ".join(a.replace("_", " ") for a in setting.attributes)
    if "probes" in wanted:
        args["probes"] = get_probes(ctx, cell)
    if "labeler" in wanted:
        args["labeler"] = ctx.labeler(params.pop("labeler", None) or ctx.suite.probe_labeler)
    return args


def build_method(ctx: RunContext, cell: Cell):
    """The cell's method, built from its suite params and what the runner supplies; a `scale: auto`
    of a method that calibrates its scale is replaced by the calibrated one (or, for a cell killed
    mid-way, by the scale its finished batches were made with)."""
    spec, params, factory = cell.method, dict(cell.method.params), cell.method_class
    supplied = supplied_arguments(ctx, cell, factory, params)
    if factory.calibrates_scale and params.get("scale", "auto") == "auto":
        from audit.methods.calibration import calibrate

        _construct(factory, spec, {**supplied, **params, "scale": 1.0})  # fail fast
        calibrated = _calibration_of_started_cell(ctx, cell) or calibrate(ctx, cell, factory, supplied["probes"],
                                                                         supplied["target"], params)
        params["scale"] = calibrated["scale"]
        if params.get("aim") is None and calibrated["aim"] is not None:
            params["aim"] = calibrated["aim"]
    return _construct(factory, spec, {**supplied, **params})


def _construct(factory, spec, kwargs: dict):
    """factory(**kwargs); an unknown or out-of-range param is a one-line SuiteError naming the method."""
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise SuiteError(f"methods '{spec.display}': bad params: {e}") from None


# -- one cell -----------------------------------------------------------------------------------

def generate_cell(ctx: RunContext, cell: Cell, method) -> None:
    """Generate what the cell's images lack, resuming by seed.

    An image is kept while a batch marker claims its seed and records that it was generated under
    what the cell asks for now: the same prompt and method choice (e.g. the class allocated over
    all the cell's seeds, which moves when `samples` does) and, for a batch-coupled method, the
    very same batch. Everything else (never generated, generated for another sample count,
    unreadable) is generated again, its labels dropped first; so the cell ends up with the images a
    fresh run of the suite would make, whatever it was run with before and wherever it was killed.
    A batch-independent method's images are generated in batches of batch_size, halved on CUDA
    out-of-memory (the images do not depend on it); a batch-coupled method's images do, so there
    out-of-memory stops the run and says what to change."""
    store, adapter, seeds = ctx.store, ctx.adapter(cell), cell.seeds
    method.start_cell(seeds)
    prompts = method.prompts([cell.prompt or DEFAULT_PROMPT] * len(seeds), seeds) if adapter.conditional else None
    choices = method.cell_choices(seeds)
    wanted = {s: (None if prompts is None else prompts[i], None if choices is None else choices[i])
              for i, s in enumerate(seeds)}
    store.recover_cell(cell.cell_id)
    units = cell.batches if cell.batch_coupled else [[s] for s in seeds]
    claims = store.claims(cell.cell_id)
    todo = [u for u in units if not _kept(ctx, cell, cell.cell_id, claims, u, wanted)]
    if ctx.progress:
        ctx.progress(len(seeds) - sum(map(len, todo)))
    if todo:
        store.forget(cell.cell_id, [s for u in todo for s in u])
    for twin in [t.cell_id for t in _twin_cells(ctx, cell)] if (todo and cell.shares_images) else []:
        twin_claims = store.claims(twin)
        copied = [u for u in todo if _kept(ctx, cell, twin, twin_claims, u, wanted, log=False)]
        by_marker: dict[int, tuple[dict, list[int]]] = {}
        for s in (s for u in copied for s in u):
            by_marker.setdefault(twin_claims[s].marker["index"], (twin_claims[s].marker, []))[1].append(s)
        for marker, copy in by_marker.values():
            store.copy_batch(twin, marker, copy, cell.cell_id, store.next_index(cell.cell_id))
            if ctx.progress:
                ctx.progress(len(copy))
        todo = [u for u in todo if u not in copied]
    if cell.batch_coupled:
        for unit in todo:
            try:
                _generate(ctx, cell, method, unit, wanted, choices is not None)
            except torch.OutOfMemoryError:
                raise SuiteError(
                    f"cell {cell.cell_id}: out of memory generating a batch of {len(unit)} images on {ctx.device}; "
                    f"{cell.method.name} couples the samples of a batch, so its images depend on batch_size: set "
                    f"batch_size: {max(1, len(unit) // 2)} (or smaller) in the suite, which makes new cells for "
                    "this method (the finished ones are kept)") from None
    else:
        rest, size = [s for u in todo for s in u], cell.batch_size
        while rest:
            chunk = rest[:size]
            try:
                _generate(ctx, cell, method, chunk, wanted, choices is not None)
            except torch.OutOfMemoryError:
                size = _smaller_batch(ctx, cell, len(chunk))
                continue
            rest = rest[len(chunk):]
    store.write_samples(cell.cell_id, seeds)


def _fits(cell: Cell, unit: list[int], found: list, wanted: dict | None, legacy_samples: int | None = None) -> bool:
    """Whether the claims `found` on the seeds of `unit` (a batch of a batch-coupled cell, else one
    seed) are of images made as the cell would make them now: per seed the same prompt and method
    choice (`wanted`) and, when coupled, generated together as exactly this batch. Without
    `wanted` (the method not built), an image that depends on a choice must have been generated
    for this sample count (markers written before they recorded it: `legacy_samples`)."""
    if any(c is None for c in found):
        return False
    if cell.batch_coupled:
        marker = found[0].marker
        if any(c.marker["index"] != marker["index"] for c in found) \
                or [int(s) for s in marker.get("batch", marker["seeds"])] != unit:
            return False
    if wanted is None:
        return all(c.choice is None or c.marker.get("samples", legacy_samples) == cell.samples for c in found)
    return all((c.prompt, c.choice) == wanted[s] for s, c in zip(unit, found, strict=True))


def _kept(ctx: RunContext, cell: Cell, source: str, claims: dict, unit: list[int], wanted: dict,
          log: bool = True) -> bool:
    """Whether cell `source` (this one, or a twin to copy from) has the images of `unit` as the cell
    would generate them now, and readable (an unreadable one is logged and generated again)."""
    if not _fits(cell, unit, [claims.get(s) for s in unit], wanted):
        return False
    for seed in unit:
        problem = image_problem(ctx.store.image_path(source, seed))
        if problem:
            if log:
                ctx.store.log_event(f"regenerating {source} seed {seed}: images/{seed:08d}.png is {problem}")
            return False
    return True


def _generate(ctx: RunContext, cell: Cell, method, seeds: list[int], wanted: dict, with_choices: bool) -> None:
    """One batch: generate, then store its images and the marker saying what they were made under."""
    adapter = ctx.adapter(cell)
    prompts = [wanted[s][0] for s in seeds] if adapter.conditional else None
    index = ctx.store.next_index(cell.cell_id)
    t0 = time.perf_counter()
    out = adapter.generate(seeds, prompts=prompts, steps=cell.model.steps, guidance_scale=cell.model.guidance_scale,
                           negative_prompt=cell.model.negative_prompt, method=method, eta=cell.model.eta)
    seconds = time.perf_counter() - t0
    span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))
    ctx.store.write_batch(cell.cell_id, index, seeds, prompts, out.images, seconds, out.stats,
                          choices=[wanted[s][1] for s in seeds] if with_choices else None, samples=cell.samples,
                          event=f"generated {cell.cell_id} batch {index} ({len(seeds)} images, seeds {span}, "
                                f"{seconds:.2f}s)")
    if ctx.progress:
        ctx.progress(len(seeds))


def _smaller_batch(ctx: RunContext, cell: Cell, size: int) -> int:
    """After CUDA out-of-memory on a batch of `size` images of a batch-independent cell: half the
    size (logged; the images are the same in any batch), or an error when one image did not fit."""
    if size <= 1:
        raise SuiteError(f"cell {cell.cell_id}: out of memory generating a single image on {ctx.device}: free GPU "
                         "memory, or set the model's dtype: float16 or memory: [attention_slicing, vae_slicing]")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    message = (f"out of memory in {cell.cell_id} with a batch of {size} images: continuing with batches of "
               f"{size // 2} (this method's images do not depend on the batch)")
    ctx.store.log_event(message)
    ctx.log(message)
    return size // 2


def _twin_cells(ctx: RunContext, cell: Cell) -> list[Cell]:
    """Cells of the suite that differ from `cell` only in their attribute setting."""
    return [c for c in plan(ctx.suite) if c.cell_id != cell.cell_id and c.image_key == cell.image_key]


IMAGE_CHECKS = ("non-finite pixels", "blank image")  # images label_cell marks invalid whatever the labeler says


def _unusable_images(ctx: RunContext, cell: Cell) -> set[int]:
    """Seeds whose sample came out NaN/inf (the adapter stored them black and listed them in
    their batch's marker)."""
    return {int(s) for b in ctx.store.batches(cell.cell_id) for s in (b.get("stats") or {}).get("nonfinite_seeds", [])}


def label_cell(ctx: RunContext, cell: Cell, labeler_name: str) -> pd.DataFrame:
    """Labels of every image of the cell, reusing the cached labels made under the same label key
    (ctx.label_key). A sample that came out non-finite, or an image of one flat colour, is invalid
    with that reason whatever the labeler says: no labeler's answer about it means anything."""
    key = ctx.label_key(labeler_name)
    cached = ctx.store.read_labels(cell.cell_id, labeler_name)
    if cached is not None:  # rows of another labeler configuration (or from before keys) are stale
        cached = cached[cached["labeler_key"] == key] if "labeler_key" in cached.columns else None
    seeds = cell.seeds
    have = set() if cached is None else set(cached["seed"].tolist())
    todo = [s for s in seeds if s not in have]
    if not todo:
        return cached[cached["seed"].isin(seeds)].sort_values("seed").reset_index(drop=True)
    labeler = ctx.labeler(labeler_name)
    nonfinite = _unusable_images(ctx, cell)
    frames = [] if cached is None or cached.empty else [cached]
    for i in range(0, len(todo), 256):
        chunk = todo[i:i + 256]
        images = ctx.store.load_images(cell.cell_id, chunk)
        result = labeler.label(images)
        valid = result.valid.astype(bool).copy()
        reasons = [r or "" for r in (result.reasons or [None] * len(chunk))]
        flat = images.flatten(1)
        blank = (flat.amax(1) == flat.amin(1)).tolist()
        for j, seed in enumerate(chunk):
            if seed in nonfinite or blank[j]:
                valid[j], reasons[j] = False, IMAGE_CHECKS[0] if seed in nonfinite else IMAGE_CHECKS[1]
        columns = {"seed": chunk, "valid": valid, "reason": reasons}
        for attribute, probs in result.probs.items():
            for k, cls in enumerate(labeler.attributes[attribute]):
                columns[f"p:{attribute}:{cls}"] = probs[:, k].astype(np.float32)
        columns["labeler_key"] = key
        frames.append(pd.DataFrame(columns))
    frame = pd.concat(frames).drop_duplicates("seed", keep="last").sort_values("seed").reset_index(drop=True)
    ctx.store.write_labels(cell.cell_id, labeler_name, frame)
    reached("labels")
    return frame[frame["seed"].isin(seeds)].reset_index(drop=True)


def measurement_keys(ctx: RunContext, cell: Cell) -> dict:
    """Digests of everything each part of a cell's metrics depends on besides the cell's identity:
    the images (model revision, seeds), and for fairness the evaluation labelers' label keys and
    the tolerance; for each FID its extractor (and weights), reference and n; for the CLIP score
    its CLIP. The metrics list is the set of parts. A finished cell is reused only under the same
    keys, and only the parts whose key changed are measured again."""
    from audit.metrics.fid import fid_identity

    images = {"revision": ctx.revision(cell), "seeds": [cell.seed, cell.samples]}
    labelers = {name: ctx.label_key(name) for name in ctx.suite.labelers}
    keys = {"fairness": digest({**images, "labelers": labelers, "tolerance": ctx.suite.tolerance})}
    if "fid" in ctx.suite.metrics:
        keys["fid"] = [digest({**images, **fid_identity(spec)}) for spec in ctx.suite.fid]
    if "clip" in ctx.suite.metrics:
        from audit.metrics.clip import cell_clip_model
        from audit.models.loading import directory_digest

        clip = cell_clip_model(ctx.suite, cell)
        weights = directory_digest(Path(clip[0])) if clip and Path(clip[0]).exists() else None
        keys["clip"] = digest({**images, "clip": clip, "weights": weights})
    return keys


def _check_not_all_diverged(ctx: RunContext, cell: Cell) -> None:
    """A cell none of whose images came out finite fails in one line (a batch of two or more
    already fails in the adapter; this catches batch size 1)."""
    if len(_unusable_images(ctx, cell) & set(cell.seeds)) == cell.samples:
        raise SuiteError(f"model {cell.model.name}: all {cell.samples} images of cell {cell.cell_id} came out "
                         f"non-finite (NaN/inf) with steps {cell.model.steps}, eta {cell.model.eta or 0:g}: the "
                         "sampler diverged; change steps or eta (or the scheduler) in the model's entry")


def measure_cell(ctx: RunContext, cell: Cell, previous: dict | None = None) -> dict:
    """The cell's metrics; the parts of `previous` (an earlier metrics.json of the cell) whose
    measurement key is unchanged are kept, the others measured (labels come from the cache)."""
    from audit.metrics.cell import fairness_metrics

    _check_not_all_diverged(ctx, cell)
    suite, keys = ctx.suite, measurement_keys(ctx, cell)
    previous = previous if isinstance(previous, dict) and previous.get("status") == "done" else {}
    old = previous.get("keys") if isinstance(previous.get("keys"), dict) else {}
    results: dict = {"labelers": {}}
    if old.get("fairness") == keys["fairness"] and isinstance(previous.get("labelers"), dict):
        results.update({k: previous[k] for k in ("labelers", "labelers_skipped", "agreement") if k in previous})
    else:
        tables = {}
        for name in suite.labelers:
            labeler = ctx.labeler(name)
            missing = unlabeled(labeler, cell.setting.attributes)
            if missing:  # e.g. a gender classifier in a suite that also audits skin tone
                results.setdefault("labelers_skipped", {})[name] = f"does not label {', '.join(missing)}"
                continue
            tables[name] = label_cell(ctx, cell, name)
            results["labelers"][name] = fairness_metrics(tables[name], labeler, cell.setting, suite.tolerance)
        if len(tables) > 1:
            from audit.metrics.cell import labeler_agreement

            results["agreement"] = labeler_agreement(tables, cell.setting)
    if "fid" in suite.metrics:
        from audit.metrics.fid import cell_fids

        stored = {f["key"]: f for f in [previous.get("fid"), *(previous.get("fid_extra") or {}).values()]
                  if isinstance(f, dict) and f.get("key") and f.get("value") is not None}
        missing = [(spec, key) for spec, key in zip(suite.fid, keys["fid"], strict=True) if key not in stored]
        if missing:
            measured = cell_fids(ctx, cell, [spec for spec, _ in missing])
            stored.update({key: {**f, "key": key} for (_, key), f in zip(missing, measured, strict=True)})
        fids = [stored[key] for key in keys["fid"]]
        results["fid"] = fids[0]
        if len(fids) > 1:
            results["fid_extra"] = {f["extractor"]: f for f in fids[1:]}
    if "clip" in suite.metrics:
        from audit.metrics.clip import cell_clip_score

        clip = previous.get("clip_score")
        if not (isinstance(clip, dict) and clip.get("key") == keys["clip"]):
            clip = {**cell_clip_score(ctx, cell), "key": keys["clip"]}
        results["clip_score"] = clip
    generation = ctx.store.generation(cell.cell_id, cell.seeds)  # the images measured, not others on disk
    seconds = float(generation["seconds"])
    results["cost"] = {"seconds": seconds, "images": cell.samples,
                       "images_per_s": cell.samples / seconds if seconds else None}
    results["guidance"] = _guidance_summary(generation["batches"])
    results["images"] = generation["images"]
    results["keys"] = keys
    return results


def _all_batches_done(ctx: RunContext, cell: Cell) -> bool:
    """Whether every current seed of the cell has its image, generated for the cell's current plan,
    judged without building the method (for --measure-only and for FIDs added to a finished cell):
    an image that depends on a per-cell choice must have been generated for this sample count, a
    batch-coupled one in exactly its batch. An unreadable image under --measure-only is an error
    naming the file (a plain run generates it again)."""
    claims = ctx.store.claims(cell.cell_id)
    manifest = ctx.store.cell_dir(cell.cell_id) / "manifest.json"
    legacy_samples = json.loads(manifest.read_text()).get("seeds", {}).get("count") if manifest.exists() else None
    units = cell.batches if cell.batch_coupled else [[s] for s in cell.seeds]
    if not all(_fits(cell, u, [claims.get(s) for s in u], None, legacy_samples) for u in units):
        return False
    for seed in cell.seeds:
        path = ctx.store.image_path(cell.cell_id, seed)
        problem = image_problem(path)
        if problem and ctx.measure_only:
            raise UnreadableImageError(f"cell {cell.cell_id}: {path.relative_to(ctx.store.out)} is {problem}: run the "
                                       "suite without --measure-only to generate it again")
        if problem:
            return False
    return True


def _measured_current_images(ctx: RunContext, cell: Cell, done: dict) -> bool:
    """Whether a finished cell's metrics still stand: measured on the cell's current seeds (metrics
    written before they recorded their images: on as many images), on the very images its markers
    claim now, and those images still whole on disk (a missing or truncated one sends the cell back
    to generate_cell, which makes it again). A cell without markers holds measurements only (e.g.
    copied by benchmarks/archive_run.py) and is trusted."""
    recorded = done.get("images")
    if recorded is None:
        if (done.get("cost") or {}).get("images") != cell.samples:
            return False
    elif (recorded.get("first"), recorded.get("count")) != (cell.seed, cell.samples):
        return False
    claims = ctx.store.claims(cell.cell_id)
    if not claims:
        return True
    if recorded is not None and recorded != ctx.store.generation(cell.cell_id, cell.seeds)["images"]:
        return False
    return all(s in claims and image_problem(ctx.store.image_path(cell.cell_id, s), thorough=False) is None
               for s in cell.seeds)


def read_metrics(path: Path) -> dict | None:
    """A cell's metrics.json, or None when it is missing, torn (a kill mid-write where renames are
    not atomic) or hand-edited into something that is not a finished cell's metrics."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("status") == "done" else None


def retire_stale_cells(ctx: RunContext, cells: list[Cell]) -> None:
    """Move aside cell directories generated from other weights of their model (the manifest's
    revision differs from the weights' revision now, e.g. a local model retrained in place), so
    their images, labels and metrics are never reused: they go to OUT/superseded/ and the cell
    is generated again. A manifest without a revision (a local model run before revisions were
    recorded) cannot vouch for its images either."""
    for cell in cells:
        manifest_file = ctx.store.cell_dir(cell.cell_id) / "manifest.json"
        if not manifest_file.exists():
            continue
        try:
            recorded = json.loads(manifest_file.read_text())["model"]["revision"]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = "unreadable"
        revision = ctx.revision(cell)
        if recorded == revision:
            continue
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(recorded))[:40]
        dest, n = inside(ctx.store.out, Path("superseded") / f"{cell.cell_id}__rev-{slug}"), 1
        while dest.exists():
            dest, n = dest.with_name(f"{cell.cell_id}__rev-{slug}-{n}"), n + 1
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(ctx.store.cell_dir(cell.cell_id), dest)
        message = (f"superseded {cell.cell_id}: its images came from revision {recorded} of model {cell.model.name}, "
                   f"whose weights are now revision {revision}; moved to superseded/{dest.name}")
        ctx.store.log_event(message)
        ctx.log(message)


def check_fid_references(ctx: RunContext) -> None:
    """Refuse, before anything is generated, FID references that cannot back the FID the suite
    asks for (audit.metrics.fid.reference_problem)."""
    if ctx.fid_checked or "fid" not in ctx.suite.metrics:
        return
    from audit.metrics.fid import reference_problem

    for spec in ctx.suite.fid:
        problem = reference_problem(spec)
        if problem:
            raise SuiteError(problem)
    ctx.fid_checked = True


def _guidance_summary(batches: list[dict]) -> dict:
    out = {"clipped_steps": 0, "skipped_nonfinite": 0}
    for b in batches:
        for key in out:
            out[key] += int(b["stats"].get(key, 0))
    return out


def manifest(ctx: RunContext, cell: Cell, method) -> dict:
    import diffusers
    import transformers

    import audit

    adapter = ctx.adapter(cell)
    return {
        "cell_id": cell.cell_id, "suite": ctx.suite.name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"name": cell.model.name, "source": cell.model.source, "id": adapter.model_id,
                  "revision": adapter.revision, "dtype": cell.model.dtype, "info": adapter.info,
                  "allow_pickle": cell.model.allow_pickle},
        "scheduler": {"class": type(adapter.scheduler).__name__, **dict(adapter.scheduler.config)},
        "steps": cell.model.steps, "eta": cell.model.eta, "guidance_scale": cell.model.guidance_scale,
        "device": ctx.device,
        "torch_threads": torch.get_num_threads(),
        "prompt": cell.prompt, "negative_prompt": cell.model.negative_prompt,
        "seeds": {"first": cell.seed, "count": cell.samples, "rule": "image i uses seed first+i"},
        "batch_size": cell.batch_size, "method": method.config(),
        "setting": {"attributes": cell.setting.attributes, "classes": cell.setting.joint_classes(),
                    "target": cell.setting.target_vector()},
        "labelers": {name: ctx.labeler(name).describe() for name in ctx.suite.labelers},
        "probe_labeler": ctx.suite.probe_labeler,
        "versions": {"diffaudit": audit.__version__, "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version(), "platform": platform.platform()},
    }


def run_cell(ctx: RunContext, cell: Cell) -> dict:
    cell_dir = ctx.store.cell_dir(cell.cell_id)
    if cell.skip_reason:
        return {"status": "not_applicable", "reason": cell.skip_reason}
    check_fid_references(ctx)
    twins = _twin_cells(ctx, cell) if cell.shares_images else []
    retire_stale_cells(ctx, [cell, *twins])  # twins too: their images would be copied
    metrics_file = cell_dir / "metrics.json"
    if ctx.measure_only:
        if not _all_batches_done(ctx, cell):
            return {"status": "incomplete", "reason": "images not (all) generated; run without --measure-only"}
        results = {"status": "done", **measure_cell(ctx, cell)}
        atomic_write_json(metrics_file, results)
        return results
    done = read_metrics(metrics_file)
    if done is not None and not _measured_current_images(ctx, cell, done):
        done = None  # measured on other images: nothing of it stands
    if done is not None:
        keys = measurement_keys(ctx, cell)
        if done.get("keys") != keys and _all_batches_done(ctx, cell):  # measured otherwise: redo what changed
            done = {"status": "done", **measure_cell(ctx, cell, previous=done)}
            atomic_write_json(metrics_file, done)
        if done.get("keys") == keys:
            if ctx.progress:
                ctx.progress(cell.samples)
            return done
    reason = _probe_labeler_gap(ctx, cell)
    if reason:
        return {"status": "not_applicable", "reason": reason}
    method = build_method(ctx, cell)
    reason = method.not_applicable(ctx.adapter(cell))
    if reason:
        return {"status": "not_applicable", "reason": reason}
    manifest_file = cell_dir / "manifest.json"
    atomic_write_json(manifest_file, manifest(ctx, cell, method))
    generate_cell(ctx, cell, method)
    results = {"status": "done", **measure_cell(ctx, cell, previous=done)}
    atomic_write_json(metrics_file, results)
    return results


# -- the suite ----------------------------------------------------------------------------------

def invalid_summary(reasons) -> str | None:
    """'no face detected: 14; blank image: 2' (most frequent first), or None when all were valid."""
    if not isinstance(reasons, dict) or not reasons:
        return None
    ordered = sorted(reasons.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
    return "; ".join(f"{reason or 'no reason given'}: {int(count)}" for reason, count in ordered)


def result_rows(cell: Cell, results: dict) -> list[dict]:
    base = {"model": cell.model.name, "method": cell.method.display, "attributes": cell.setting.key,
            "target": cell.setting.target_label, "prompt": cell.prompt, "status": results.get("status"),
            "n": cell.samples, "cell_id": cell.cell_id}
    if results.get("status") != "done":
        return [{**base, "labeler": None}]
    if not results["labelers"]:
        return [{**base, "status": "no_labeler", "labeler": None}]
    fid = results.get("fid") or {}
    extra = {}
    for extractor, f in (results.get("fid_extra") or {}).items():
        extra[f"fid[{extractor}]"], extra[f"fid_target[{extractor}]"] = f.get("value"), f.get("target_value")
    cost = results["cost"]
    rows = []
    for labeler, m in results["labelers"].items():
        error_aware = m.get("error_aware") or {}
        rows.append({**base, "labeler": labeler, "n_valid": m["n_valid"],
                     "invalid_reasons": invalid_summary(m.get("invalid_reasons")), "fd": m["fd"], "fd_lo": m["fd_lo"],
                     "fd_hi": m["fd_hi"], "fd_floor": m.get("fd_floor"), "fd_corrected": m.get("fd_corrected"),
                     "fd_soft": m["fd_soft"], "kl": m["kl"], "chi2_p": m["chi2_p"], "chi2_method": m.get("chi2_method"),
                     "tost_p": m["tost_p"], "equivalent": m["equivalent"],
                     "verdict": m.get("verdict") or "inconclusive", "samples_needed": m.get("samples_needed"),
                     "error_aware_fd": error_aware.get("fd"), "error_aware_fd_lo": error_aware.get("fd_lo"),
                     "error_aware_fd_hi": error_aware.get("fd_hi"),
                     "fid": fid.get("value"), "fid_target": fid.get("target_value"),
                     "fid_extractor": fid.get("extractor"), **extra,
                     "clip_score": (results.get("clip_score") or {}).get("value"),
                     "seconds": cost["seconds"], "images_per_s": cost["images_per_s"]})
    return rows


def index_rows(store: RunStore, suite: Suite, cell: Cell, results: dict) -> None:
    row = {"cell_id": cell.cell_id, "suite": suite.name, "model": cell.model.name, "method": cell.method.display,
           "attributes": cell.setting.key, "target": cell.setting.target_label, "prompt": cell.prompt,
           "status": results.get("status"), "reason": results.get("reason"), "n": cell.samples,
           "seconds": (results.get("cost") or {}).get("seconds"),
           "images_per_s": (results.get("cost") or {}).get("images_per_s")}
    metrics = []
    for labeler, m in (results.get("labelers") or {}).items():
        metrics.append((labeler, "fd", m["fd"], m["fd_lo"], m["fd_hi"]))
        metrics.append((labeler, "kl", m["kl"], None, None))
        metrics.append((labeler, "chi2_p", m["chi2_p"], None, None))
    if results.get("fid"):
        metrics.append(("", f"fid[{results['fid']['extractor']}]", results["fid"]["value"], None, None))
    for extractor, f in (results.get("fid_extra") or {}).items():
        metrics.append(("", f"fid[{extractor}]", f.get("value"), None, None))
    store.index_cell(row, metrics)


def run_suite(suite: Suite, out: str | Path, device: str = "cpu", executor: str = "local",
              address: str | None = None, console=None, suite_path: str | None = None,
              measure_only: bool = False) -> pd.DataFrame:
    """Run every cell (resuming what exists) and write results.csv / results.json / report.
    `measure_only` recomputes the metrics of cells whose images exist (e.g. after an upgrade
    added a metric, or to report an unfinished run) and generates nothing. Holds OUT's lock
    throughout: a second process on the same OUT gets a one-line RunLockedError."""
    if measure_only and executor != "local":
        raise SuiteError("--measure-only runs locally (measuring is cheap): drop --executor ray")
    store = RunStore(out)
    with store.lock("diffaudit run"):
        return _run_suite(suite, store, device, executor, address, console, suite_path, measure_only)


def _run_suite(suite: Suite, store: RunStore, device: str, executor: str, address: str | None, console,
               suite_path: str | None, measure_only: bool) -> pd.DataFrame:
    cells = plan(suite)
    atomic_write_json(store.out / "suite.json", {"path": suite_path, **suite.model_dump()})
    if executor == "ray":
        from audit.executors.ray_executor import run_cells_on_ray

        all_results = run_cells_on_ray(suite, store.out, cells, device=device, address=address, console=console)
        for cell, results in zip(cells, all_results, strict=True):
            index_rows(store, suite, cell, results)
    else:
        all_results = []

        def after_cell(cell: Cell, results: dict) -> None:
            all_results.append(results)
            index_rows(store, suite, cell, results)
            write_results(store, suite, cells, all_results)

        _run_local(suite, store, cells, device, console, measure_only, after_cell)
    return write_results(store, suite, cells, all_results)


def write_results(store: RunStore, suite: Suite, cells: list[Cell], results: list[dict]) -> pd.DataFrame:
    """results.csv / results.json for the first len(results) cells; the others are listed with
    status "pending". Written after every cell, so an interrupted run still has the table of what
    it finished (and benchmarks/archive_run.py can keep it)."""
    rows = []
    for i, cell in enumerate(cells):
        rows.extend(result_rows(cell, results[i] if i < len(results) else {"status": "pending"}))
    frame = pd.DataFrame(rows).reindex(columns=result_columns(suite))
    with atomic_path(store.out / "results.csv") as tmp:
        frame.to_csv(tmp, index=False)
    atomic_write_json(store.out / "results.json", json.loads(frame.to_json(orient="records")))
    return frame


def _run_cell_reporting_oom(ctx: RunContext, cell: Cell) -> dict:
    """run_cell, with CUDA out-of-memory outside image generation (which handles its own) turned
    into one line saying which batch size to lower."""
    try:
        return run_cell(ctx, cell)
    except torch.OutOfMemoryError:
        raise SuiteError(f"cell {cell.cell_id}: out of memory on {ctx.device} outside image generation: lower "
                         f"probe.batch_size ({ctx.suite.probe.batch_size}) if probes were training, batch_size "
                         f"({cell.batch_size}) if the scale was calibrating, or a labeler's batch_size in "
                         "labeler_options") from None


def _run_local(suite: Suite, store: RunStore, cells: list[Cell], device: str, console,
               measure_only: bool, after_cell) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    progress = Progress(*columns, console=console, transient=False) if console is not None else None
    with progress or nullcontext():
        cell_task = progress.add_task("cells", total=len(cells)) if progress else None
        image_task = progress.add_task("images", total=sum(c.samples for c in cells if not c.skip_reason)) \
            if progress else None
        ctx = RunContext(suite=suite, store=store, device=device, measure_only=measure_only,
                         progress=(lambda n: progress.advance(image_task, n)) if progress else None,
                         log=(progress.console.log if progress else (lambda *a: None)))
        for cell in cells:
            if progress:
                progress.update(cell_task, description=f"cells ({cell.model.name} / {cell.method.display} / "
                                                       f"{cell.setting.key})")
            after_cell(cell, _run_cell_reporting_oom(ctx, cell))
            if progress:
                progress.advance(cell_task)
