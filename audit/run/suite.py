"""A suite's run: every cell (resuming what exists), locally with a progress bar or on Ray, then
results.csv / results.json and the SQLite index. One process at a time writes an output directory.

A cell is done when its metrics.json was measured on the images its seeds have now and under the
suite's measurement keys (model revision, seeds, labeler configurations, tolerance, FID and CLIP
specs), HELM-style. Generation resumes seed by seed; labels are cached per (image, label key); so
re-running a suite after a crash, with an added labeler, a changed option or more or fewer samples
redoes only what is missing, changed or no longer matches. A cell whose images came from other
weights of its model is moved to OUT/superseded/ and generated again.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import torch

from audit.files import atomic_path, atomic_write_json
from audit.results import CellOutcome, CellResult
from audit.run.cell import run_cell
from audit.run.context import RunContext
from audit.spec import Cell, Suite, SuiteError, plan
from audit.store import RunStore

# definitions other work reports (audit.metrics.cell: distances from uniform, whatever the target)
LITERATURE_COLUMNS = ["heim_imbalance", "deviation_ratio", "normalized_entropy", "soft_fd"]
RESULT_COLUMNS = ["model", "method", "attributes", "target", "prompt", "labeler", "status", "n", "n_valid",
                  "invalid_reasons", "fd", "fd_lo", "fd_hi", "fd_floor", "fd_corrected", "fd_soft", "kl", "chi2_p",
                  "chi2_method", "tost_p", "equivalent", "verdict", "samples_needed",
                  "error_aware_fd", "error_aware_fd_lo", "error_aware_fd_hi", *LITERATURE_COLUMNS,
                  "fid", "fid_target", "fid_extractor", "clip_score", "seconds", "images_per_s",
                  "cell_id"]


def result_columns(suite: Suite) -> list[str]:
    """RESULT_COLUMNS, with fid[X] and fid_target[X] after fid_extractor for every FID extractor
    beyond the primary one."""
    extra = [f"{c}[{spec.extractor}]" for spec in suite.fid[1:] for c in ("fid", "fid_target")] \
        if "fid" in suite.metrics else []
    at = RESULT_COLUMNS.index("fid_extractor") + 1
    return RESULT_COLUMNS[:at] + extra + RESULT_COLUMNS[at:]


def invalid_summary(reasons: dict[str, int]) -> str | None:
    """'no face detected: 14; blank image: 2' (most frequent first), or None when all were valid."""
    if not reasons:
        return None
    ordered = sorted(reasons.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
    return "; ".join(f"{reason or 'no reason given'}: {int(count)}" for reason, count in ordered)


def result_rows(cell: Cell, results: CellResult | CellOutcome) -> list[dict]:
    """The results.csv rows of a cell: one per evaluation labeler that judged it (derived from its
    CellResult), or one row saying why it has no metrics."""
    base = {"model": cell.model.name, "method": cell.method.display, "attributes": cell.setting.key,
            "target": cell.setting.target_label, "prompt": cell.prompt, "status": results.status,
            "n": cell.samples, "cell_id": cell.cell_id}
    if not isinstance(results, CellResult):
        return [{**base, "labeler": None}]
    if not results.labelers:
        return [{**base, "status": "no_labeler", "labeler": None}]
    fid = results.fid
    extra = {}
    for extractor, f in results.fid_extra.items():
        extra[f"fid[{extractor}]"], extra[f"fid_target[{extractor}]"] = f.value, f.target_value
    rows = []
    for labeler, m in results.labelers.items():
        error_aware = m.error_aware or {}
        rows.append({**base, "labeler": labeler, "n_valid": m.n_valid,
                     "invalid_reasons": invalid_summary(m.invalid_reasons), "fd": m.fd, "fd_lo": m.fd_lo,
                     "fd_hi": m.fd_hi, "fd_floor": m.fd_floor, "fd_corrected": m.fd_corrected,
                     "fd_soft": m.fd_soft, "kl": m.kl, "chi2_p": m.chi2_p, "chi2_method": m.chi2_method,
                     "tost_p": m.tost_p, "equivalent": m.equivalent,
                     "verdict": m.verdict or "inconclusive", "samples_needed": m.samples_needed,
                     "error_aware_fd": error_aware.get("fd"), "error_aware_fd_lo": error_aware.get("fd_lo"),
                     "error_aware_fd_hi": error_aware.get("fd_hi"),
                     **{c: (m.literature or {}).get(c) for c in LITERATURE_COLUMNS},
                     "fid": fid.value if fid else None, "fid_target": fid.target_value if fid else None,
                     "fid_extractor": fid.extractor if fid else None, **extra,
                     "clip_score": results.clip_score.value if results.clip_score else None,
                     "seconds": results.cost.seconds, "images_per_s": results.cost.images_per_s})
    return rows


def index_rows(store: RunStore, suite: Suite, cell: Cell, results: CellResult | CellOutcome) -> None:
    """The cell's row and headline metrics in OUT/index.sqlite (for queries across runs)."""
    done = isinstance(results, CellResult)
    row = {"cell_id": cell.cell_id, "suite": suite.name, "model": cell.model.name, "method": cell.method.display,
           "attributes": cell.setting.key, "target": cell.setting.target_label, "prompt": cell.prompt,
           "status": results.status, "reason": None if done else results.reason, "n": cell.samples,
           "seconds": results.cost.seconds if done else None,
           "images_per_s": results.cost.images_per_s if done else None}
    metrics = []
    for labeler, m in (results.labelers if done else {}).items():
        metrics.append((labeler, "fd", m.fd, m.fd_lo, m.fd_hi))
        metrics.append((labeler, "kl", m.kl, None, None))
        metrics.append((labeler, "chi2_p", m.chi2_p, None, None))
    for f in results.fids() if done else []:
        metrics.append(("", f"fid[{f.extractor}]", f.value, None, None))
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
        from audit.run.ray import run_cells_on_ray

        all_results = run_cells_on_ray(suite, store.out, cells, device=device, address=address, console=console)
        for cell, results in zip(cells, all_results, strict=True):
            index_rows(store, suite, cell, results)
    else:
        all_results = []

        def after_cell(cell: Cell, results: CellResult | CellOutcome) -> None:
            all_results.append(results)
            index_rows(store, suite, cell, results)
            write_results(store, suite, cells, all_results)

        _run_local(suite, store, cells, device, console, measure_only, after_cell)
    return write_results(store, suite, cells, all_results)


def write_results(store: RunStore, suite: Suite, cells: list[Cell],
                  results: list[CellResult | CellOutcome]) -> pd.DataFrame:
    """results.csv / results.json for the first len(results) cells; the others are listed with
    status "pending". Written after every cell, so an interrupted run still has the table of what
    it finished (and benchmarks/archive_run.py can keep it)."""
    rows = []
    for i, cell in enumerate(cells):
        rows.extend(result_rows(cell, results[i] if i < len(results) else CellOutcome(status="pending")))
    frame = pd.DataFrame(rows).reindex(columns=result_columns(suite))
    with atomic_path(store.out / "results.csv") as tmp:
        frame.to_csv(tmp, index=False)
    atomic_write_json(store.out / "results.json", json.loads(frame.to_json(orient="records")))
    return frame


def _run_cell_reporting_oom(ctx: RunContext, cell: Cell) -> CellResult | CellOutcome:
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
