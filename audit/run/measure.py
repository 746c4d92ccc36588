"""A cell's metrics: fairness per evaluation labeler, FID per spec (against cached reference
statistics) and the CLIP score, each keyed by what it depends on so that a finished cell is
re-measured only where a key changed. The math lives in audit.metrics; this module feeds it a
cell's stored images and labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from audit.files import atomic_path, inside
from audit.metrics.clip import clip_score, clip_scores, truncated_prompts
from audit.metrics.fid import (
    batches,
    extractor_tag,
    feature_dim,
    make_fid,
    matches_target,
    reference_identity,
    reference_images,
    target_reference_images,
)
from audit.results import CellResult, SchemaMismatch, read_record
from audit.run.context import RunContext, digest
from audit.run.generate import fits, unusable_images
from audit.run.label import label_cell
from audit.run.probes import unlabeled
from audit.spec import Cell, SuiteError
from audit.stages import reached
from audit.store import UnreadableImageError, image_problem

CLIP_SCORE_RULE = "mean-clamped"  # part of the CLIP key: cells scored by an earlier rule are scored again
# Part of the fairness key: a change to how the statistics are computed (here: error-aware intervals
# from 4,000 bootstrap resamples, literature metrics as columns) measures finished cells again.
STATISTICS_RULE = 2


def measurement_keys(ctx: RunContext, cell: Cell) -> dict:
    """Digests of everything each part of a cell's metrics depends on besides the cell's identity:
    the images (model revision, seeds), and for fairness the evaluation labelers' label keys, the
    tolerance and the statistics rule; for each FID its extractor (and weights), reference and n;
    for the CLIP score its CLIP and the scoring rule. The metrics list is the set of parts. A
    finished cell is reused only under the same keys, and only the parts whose key changed are
    measured again."""
    from audit.metrics.fid import fid_identity

    images = {"revision": ctx.revision(cell), "seeds": [cell.seed, cell.samples]}
    labelers = {name: ctx.label_key(name) for name in ctx.suite.labelers}
    keys = {"fairness": digest({**images, "labelers": labelers, "tolerance": ctx.suite.tolerance,
                                "statistics": STATISTICS_RULE})}
    if "fid" in ctx.suite.metrics:
        keys["fid"] = [digest({**images, **fid_identity(spec)}) for spec in ctx.suite.fid]
    if "clip" in ctx.suite.metrics:
        from audit.sources import directory_digest

        clip = cell_clip_model(ctx.suite, cell)
        weights = directory_digest(Path(clip[0])) if clip and Path(clip[0]).exists() else None
        keys["clip"] = digest({**images, "clip": clip, "weights": weights, "score": CLIP_SCORE_RULE})
    return keys


def _check_not_all_diverged(ctx: RunContext, cell: Cell) -> None:
    """A cell none of whose images came out finite fails in one line (a batch of two or more
    already fails in the adapter; this catches batch size 1)."""
    if len(unusable_images(ctx, cell) & set(cell.seeds)) == cell.samples:
        raise SuiteError(f"model {cell.model.name}: all {cell.samples} images of cell {cell.cell_id} came out "
                         f"non-finite (NaN/inf) with steps {cell.model.steps}, eta {cell.model.eta or 0:g}: the "
                         "sampler diverged; change steps or eta (or the scheduler) in the model's entry")


def measure_cell(ctx: RunContext, cell: Cell, previous: CellResult | None = None) -> CellResult:
    """The cell's metrics; the parts of `previous` (an earlier metrics.json of the cell) whose
    measurement key is unchanged are kept, the others measured (labels come from the cache)."""
    from audit.metrics.cell import fairness_metrics

    _check_not_all_diverged(ctx, cell)
    suite, keys = ctx.suite, measurement_keys(ctx, cell)
    previous = previous.model_dump(mode="json") if previous is not None else {}
    old = previous.get("keys", {})
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
    return CellResult.model_validate(results)


def all_images_done(ctx: RunContext, cell: Cell) -> bool:
    """Whether every current seed of the cell has its image, generated for the cell's current plan,
    judged without building the method (for --measure-only and for FIDs added to a finished cell):
    an image that depends on a per-cell choice must have been generated for this sample count, a
    batch-coupled one in exactly its batch. An unreadable image under --measure-only is an error
    naming the file (a plain run generates it again)."""
    claims = ctx.store.claims(cell.cell_id)
    manifest = ctx.store.cell_dir(cell.cell_id) / "manifest.json"
    legacy_samples = json.loads(manifest.read_text()).get("seeds", {}).get("count") if manifest.exists() else None
    units = cell.batches if cell.batch_coupled else [[s] for s in cell.seeds]
    if not all(fits(cell, u, [claims.get(s) for s in u], None, legacy_samples) for u in units):
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


def measured_current_images(ctx: RunContext, cell: Cell, done: CellResult) -> bool:
    """Whether a finished cell's metrics still stand: measured on the cell's current seeds (metrics
    written before they recorded their images: on as many images), on the very images its markers
    claim now, and those images still whole on disk (a missing or truncated one sends the cell back
    to generate_cell, which makes it again). A cell without markers holds measurements only (e.g.
    copied by benchmarks/archive_run.py) and is trusted."""
    recorded = done.images or None
    if recorded is None:
        if done.cost.images != cell.samples:
            return False
    elif (recorded.get("first"), recorded.get("count")) != ((cell.seeds or [None])[0], cell.samples):
        return False
    claims = ctx.store.claims(cell.cell_id)
    if not claims:
        return True
    if recorded is not None and recorded != ctx.store.generation(cell.cell_id, cell.seeds)["images"]:
        return False
    return all(s in claims and image_problem(ctx.store.image_path(cell.cell_id, s), thorough=False) is None
               for s in cell.seeds)


def read_metrics(path: Path) -> CellResult | None:
    """A cell's metrics.json, or None when it is missing, torn (a kill mid-write where renames are
    not atomic), of another results schema (measured again from the cached labels) or hand-edited
    into something that is not a finished cell's metrics."""
    if not path.exists():
        return None
    try:
        return read_record(path, CellResult)
    except SchemaMismatch:
        return None


def _guidance_summary(batches: list[dict]) -> dict:
    out = {"clipped_steps": 0, "skipped_nonfinite": 0}
    for b in batches:
        for key in out:
            out[key] += int(b["stats"].get(key, 0))
    return out


def reference_state(out: Path, extractor: str, reference: str, n: int, weights: str | None = None,
                    target: tuple[list[str], list[float]] | None = None) -> dict[str, torch.Tensor]:
    """The reference set's feature statistics, cached under a name that says how they were made;
    with `target` (attributes, joint target), the target-matched set (target_reference_images)."""
    from safetensors.torch import load_file, save_file

    safe = lambda text: "".join(c if c.isalnum() or c in "-_." else "_" for c in text)  # noqa: E731
    name = reference_identity(reference, n)
    if target is not None:
        name = f"{name}-{'x'.join(target[0])}-{'_'.join(f'{v:g}' for v in target[1])}"
    cache = inside(out, Path("fid") / f"{safe(extractor_tag(extractor, weights))}__{safe(name)}__n{n}.safetensors")
    if cache.exists():
        return load_file(cache)
    metric = make_fid(extractor, weights)
    images = reference_images(reference, n) if target is None else target_reference_images(reference, *target, n)
    for part in batches(images, 500):
        metric.update(part, real=True)
    state = {k: getattr(metric, k).detach().clone() for k in
             ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")}
    with atomic_path(cache) as tmp:  # a unique temporary name: parallel Ray tasks may write the same cache
        save_file(state, tmp)
    return state


def cell_fids(ctx, cell, specs=None) -> list[dict]:
    """FID[extractor] of a cell's images for each FID spec (default: the suite's list, primary
    first) against the spec's reference set and, for generated references, also against the
    target-matched ground truth (`target_value`, where the reference can draw it). The images are
    read once for every spec."""
    specs = list(ctx.suite.fid if specs is None else specs)
    metrics: dict[tuple[int, str], object] = {}
    for i, spec in enumerate(specs):
        references = {"value": None}
        if matches_target(spec.reference, cell.setting.attributes):
            references["target_value"] = (cell.setting.attributes, cell.setting.target_vector())
        for key, target in references.items():
            metric = metrics[i, key] = make_fid(spec.extractor, spec.weights)
            state = reference_state(ctx.store.out, spec.extractor, spec.reference, spec.n, spec.weights, target)
            for name, value in state.items():
                setattr(metric, name, value)
    reached("fid")
    for start in range(0, len(cell.seeds), 500):
        images = ctx.store.load_images(cell.cell_id, cell.seeds[start:start + 500])
        for metric in metrics.values():
            metric.update(images, real=False)
    # n_reference: the images the reference statistics were made from, not the count asked for
    return [{"extractor": spec.extractor, "reference": spec.reference, "n_requested": spec.n,
             "n_reference": int(metrics[i, "value"].real_features_num_samples), "n": len(cell.seeds),
             "feature_dim": feature_dim(spec.extractor),
             **{key: float(metric.compute()) for (j, key), metric in metrics.items() if j == i}}
            for i, spec in enumerate(specs)]


def cell_clip_model(suite, cell) -> tuple[str, str] | None:
    """(path to load, name to report) of the CLIP that scores the cell, or None."""
    if suite.clip_model:
        return suite.clip_model, suite.clip_model
    from audit.registry import model_source

    owner = model_source(cell.model.source)
    return owner[0].clip_model(owner[1]) if owner else None


def cell_clip_score(ctx, cell) -> dict:
    if cell.prompt is None:
        return {"value": None, "reason": "unconditional model: no prompt to align with"}
    clip = cell_clip_model(ctx.suite, cell)
    if clip is None:
        return {"value": None, "reason": "no clip_model configured in the suite"}
    samples = ctx.store.write_samples(cell.cell_id, cell.seeds)
    scores = []
    for i in range(0, len(samples), 256):
        chunk = samples.iloc[i:i + 256]
        images = ctx.store.load_images(cell.cell_id, chunk["seed"].tolist())
        scores.append(clip_scores(images, chunk["prompt"].tolist(), clip[0]))
    prompts = samples["prompt"].tolist()
    truncated, limit = truncated_prompts(prompts, clip[0])
    if truncated:
        message = (f"CLIP score of {cell.cell_id}: {truncated} of {len(prompts)} prompts are longer than the CLIP's "
                   f"{limit} tokens and were truncated (end-of-text token kept): the score reads only their start")
        ctx.log(message)
        ctx.store.log_event(message)
    return {**clip_score(np.concatenate(scores)), "model": clip[1], "truncated": truncated}
