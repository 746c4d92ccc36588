"""Terminal views of a suite: the cell plan with its estimated cost, and the run summary."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from audit.spec import Suite, plan

# UNet evaluations per image and step, relative to one plain forward pass.
METHOD_COST = {"none": 1.0, "prompt": 1.0, "distribution_guidance": 1.05, "sample_guidance": 1.05,
               "universal_guidance": 3.5}
X_PATH_COST = 2.2
# Measured on 2 CPU cores: seconds per image per step for the zoo models (batch 50).
ZOO_SECONDS_PER_IMAGE_STEP = {"zoo:synthfaces-ddpm": 0.0035, "zoo:synthfaces-t2i": 0.006}


def cell_cost(cell) -> tuple[float, float | None]:
    """(UNet image-evaluations, estimated seconds or None when the model's speed is unknown)."""
    factor = METHOD_COST.get(cell.method.name, 1.0)
    if cell.method.params.get("path") == "x":
        factor = X_PATH_COST
    cfg = 2.0 if cell.model.guidance_scale != 1.0 else 1.0
    nfe = cell.samples * cell.model.steps * factor * cfg
    per = ZOO_SECONDS_PER_IMAGE_STEP.get(cell.model.source)
    return nfe, (nfe * per if per else None)


def print_plan(suite: Suite, console) -> None:
    cells = plan(suite)
    table = Table(title=f"suite {suite.name}: {len(cells)} cells")
    for column in ("#", "model", "method", "attributes", "target", "prompt", "samples", "UNet evals", "est. time"):
        table.add_column(column)
    total_nfe, total_s, unknown = 0.0, 0.0, False
    shared_seen = set()
    for i, cell in enumerate(cells):
        if cell.skip_reason:
            table.add_row(str(i), cell.model.name, cell.method.display, cell.setting.key,
                          cell.setting.target_label, cell.prompt or "", "-", "-", f"skipped: {cell.skip_reason}")
            continue
        if cell.shares_images:  # generated once, shared by every setting (see runner._twin_cells)
            if cell.image_key in shared_seen:
                table.add_row(str(i), cell.model.name, cell.method.display, cell.setting.key,
                              cell.setting.target_label, cell.prompt or "", str(cell.samples), "0", "shared")
                continue
            shared_seen.add(cell.image_key)
        nfe, seconds = cell_cost(cell)
        total_nfe += nfe
        if seconds is None:
            unknown = True
        else:
            total_s += seconds
        table.add_row(str(i), cell.model.name, cell.method.display, cell.setting.key, cell.setting.target_label,
                      cell.prompt or "", str(cell.samples), f"{nfe:,.0f}",
                      "?" if seconds is None else f"{seconds / 60:.1f} min")
    console.print(table)
    applicable = sum(not c.skip_reason for c in cells)
    estimate = f"~{total_s / 60:.1f} min on 2 CPU cores" + (" + models of unknown speed" if unknown else "")
    if unknown and not total_s:
        estimate = "time unknown (no speed measurement for these models)"
    console.print(f"{applicable} cells to run, {len(cells) - applicable} not applicable; "
                  f"{total_nfe:,.0f} UNet image-evaluations; {estimate} (plus probe training and labeling)")
    for model in suite.models:
        console.print(f"model {model.name}: {weights_status(model)}", soft_wrap=True)


def weights_status(model) -> str:
    """Where a model's weights are, or why they are missing (a dry run never loads them)."""
    from audit.models.loading import ModelNotAvailable, PickledWeights, check_weight_format, resolve_source

    if model.source.startswith("custom:"):
        return "a custom model registered in this process (loaded by its factory)"
    try:
        path, _ = resolve_source(model.source, model.revision)
    except ModelNotAvailable as missing:
        return f"weights missing: {missing}"
    try:
        check_weight_format(model, path)
    except PickledWeights as pickled:
        return f"weights found at {path} but refused: {pickled}"
    return f"weights found at {path}"


def _num(value, spec: str = ".3f") -> str:
    """A number for the table, or "" when it is missing (None or NaN: nothing was measured)."""
    return "" if value is None or pd.isna(value) else format(value, spec)


def print_summary(frame: pd.DataFrame, console) -> None:
    """The results table. Every value may be missing (a cell with no valid sample has no FD, a
    cell without timings no speed): such a cell says why instead of printing a number."""
    table = Table(title="results")
    for column in ("model", "method", "attributes", "target", "labeler", "n", "FD [95% CI]", "verdict", "KL", "FID",
                   "img/s"):
        table.add_column(column)
    for row in frame.itertuples():
        if row.status != "done":
            table.add_row(row.model, row.method, row.attributes, row.target, "", "", row.status, "", "", "", "")
            continue
        if _num(row.fd):
            fd = f"{row.fd:.3f} [{_num(row.fd_lo)}, {_num(row.fd_hi)}]"
        else:
            reasons = getattr(row, "invalid_reasons", None)
            fd = "not measured: no valid sample" + (f" ({reasons})" if isinstance(reasons, str) and reasons else "")
        table.add_row(row.model, row.method, row.attributes, row.target, row.labeler or "",
                      f"{_num(row.n_valid, '.0f') or '?'}/{_num(row.n, '.0f')}", fd, _verdict(row), _num(row.kl),
                      _num(row.fid, ".2f"),
                      _num(row.images_per_s, ".1f"))
    console.print(table)


def _verdict(row) -> str:
    """on target / off target / inconclusive (with the samples that would decide it)."""
    verdict = getattr(row, "verdict", None)
    if not isinstance(verdict, str):
        return ""
    needed = _num(getattr(row, "samples_needed", None), ".0f")
    return verdict.replace("_", " ") + (f" (needs ~{needed})" if verdict == "inconclusive" and needed else "")
