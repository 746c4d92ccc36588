"""One cell from start to finish: reuse what is measured, build the method, write the manifest,
generate, measure. A cell is done when its metrics.json exists under the current measurement keys."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import torch

from audit.files import atomic_write_json, inside
from audit.results import SCHEMA_VERSION, CellOutcome, CellResult, Manifest
from audit.run.build import build_method
from audit.run.context import RunContext
from audit.run.generate import generate_cell, twin_cells
from audit.run.measure import all_images_done, measure_cell, measured_current_images, measurement_keys, read_metrics
from audit.run.probes import probe_labeler_gap
from audit.spec import Cell, SuiteError


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


def manifest(ctx: RunContext, cell: Cell, method) -> dict:
    import diffusers
    import transformers

    import audit

    adapter = ctx.adapter(cell)
    record = {
        "schema_version": SCHEMA_VERSION, "cell_id": cell.cell_id, "suite": ctx.suite.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"name": cell.model.name, "source": cell.model.source, "id": adapter.model_id,
                  "revision": adapter.revision, "dtype": cell.model.dtype, "info": adapter.info,
                  "allow_pickle": cell.model.allow_pickle},
        "scheduler": None if adapter.scheduler is None else {"class": type(adapter.scheduler).__name__,
                                                              **dict(adapter.scheduler.config)},
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
    return record if not cell.model.finished_images else _finished_images_manifest(ctx, cell, adapter, record)


def _finished_images_manifest(ctx: RunContext, cell: Cell, adapter, record: dict) -> dict:
    """An image folder's cell: no sampler, no dtype; its revision is the folder's content hash,
    its seeds the folder's, and every image named with its metadata line and columns."""
    folder = adapter.folder
    available = len(folder.of_prompt(cell.prompt))
    record["model"].update(dtype=None, allow_pickle=None)
    record.update(steps=None, eta=None, guidance_scale=None, negative_prompt=None)
    record["seeds"] = {"first": cell.seeds[0], "count": cell.samples,
                       "rule": f"image i of the cell is its prompt's image i in metadata.jsonl; its seed: "
                               f"{folder.seed_rules[cell.prompt]}"}
    record["images"] = {"available": available, "asked": ctx.suite.samples, "used": cell.samples,
                        "files": adapter.source_images(cell.prompt, cell.seeds)}
    return record


def run_cell(ctx: RunContext, cell: Cell) -> CellResult | CellOutcome:
    """The cell's CellResult (written to its metrics.json), or why it has none."""
    cell_dir = ctx.store.cell_dir(cell.cell_id)
    if cell.skip_reason:
        return CellOutcome(status="not_applicable", reason=cell.skip_reason)
    check_fid_references(ctx)
    twins = twin_cells(ctx, cell) if cell.shares_images else []
    retire_stale_cells(ctx, [cell, *twins])  # twins too: their images would be copied
    metrics_file = cell_dir / "metrics.json"
    if ctx.measure_only:
        if not all_images_done(ctx, cell):
            return CellOutcome(status="incomplete", reason="images not (all) generated; run without --measure-only")
        return write_metrics(metrics_file, measure_cell(ctx, cell))
    done = read_metrics(metrics_file)
    if done is not None and not measured_current_images(ctx, cell, done):
        done = None  # measured on other images: nothing of it stands
    if done is not None:
        keys = measurement_keys(ctx, cell)
        if done.keys != keys and all_images_done(ctx, cell):  # measured otherwise: redo what changed
            done = write_metrics(metrics_file, measure_cell(ctx, cell, previous=done))
        if done.keys == keys:
            if ctx.progress:
                ctx.progress(cell.samples)
            return done
    reason = probe_labeler_gap(ctx, cell)
    if reason:
        return CellOutcome(status="not_applicable", reason=reason)
    method = build_method(ctx, cell)
    reason = method.not_applicable(ctx.adapter(cell))
    if reason:
        return CellOutcome(status="not_applicable", reason=reason)
    manifest_file = cell_dir / "manifest.json"
    atomic_write_json(manifest_file, Manifest.model_validate(manifest(ctx, cell, method)).model_dump(mode="json"))
    generate_cell(ctx, cell, method)
    return write_metrics(metrics_file, measure_cell(ctx, cell, previous=done))


def write_metrics(path: Path, result: CellResult) -> CellResult:
    atomic_write_json(path, result.model_dump(mode="json"))
    return result
