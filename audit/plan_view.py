"""Terminal views of a suite: the cell plan with its estimated cost, and the run summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich import box
from rich.table import Table
from rich.text import Text

from audit.spec import Suite, plan


def cell_cost(cell) -> tuple[float, float | None]:
    """(UNet image-evaluations, estimated seconds or None when the model's speed is unknown): the
    method's relative cost (Method.cost) times samples, steps and classifier-free guidance's 2.
    A folder of finished images (images:DIR) generates nothing: its cells cost no evaluations."""
    if cell.model.finished_images:
        return 0.0, 0.0
    factor = cell.method_class.cost(cell.method.checked_params())
    cfg = 2.0 if cell.model.guidance_scale != 1.0 else 1.0
    nfe = cell.samples * cell.model.steps * factor * cfg
    per = cell.model.seconds_per_image_step()
    return nfe, (nfe * per if per else None)


def print_plan(suite: Suite, console, verbose: bool = False, out: Path | None = None) -> list[str]:
    """The dry run: a summary per model and method (the per-cell table with `verbose`), the
    estimated total including calibration and probe training, and where each model's weights are.
    Returns the names of the models a real run could not load (weights missing or refused)."""
    cells = plan(suite)
    costs = _cell_costs(cells)
    if verbose:
        _print_cells(suite, cells, costs, console)
    else:
        _print_groups(suite, cells, costs, console)
    total_nfe = sum(nfe for nfe, _ in costs.values())
    run_s, run_unknown = _seconds([s for _, s in costs.values()])
    applicable = sum(not c.skip_reason for c in cells)
    estimate = "time unknown (no speed measurement for these models)" if run_unknown and not run_s else (
        f"~{_minutes(run_s)}" + (" + models of unknown speed" if run_unknown else ""))
    console.print(f"{applicable} cells to run, {len(cells) - applicable} not applicable; "
                  f"{total_nfe:,.0f} UNet image-evaluations; {estimate}")
    calib, calib_lines = calibration_cost(suite, cells, out)
    probe, probe_lines = probe_cost(suite, cells, out)
    if calib_lines and probe_lines and not calib and not probe:
        calib_lines, probe_lines = [calib_lines[0].replace("calibrations shipped or cached (no cost)",
                                                           "records and every probe shipped or cached")], []
    for line in calib_lines + probe_lines:
        console.print(line)
    extra_s, extra_unknown = _seconds([s for _, s in calib + probe])
    seconds, unknown = run_s + extra_s, run_unknown or extra_unknown
    if calib or probe:
        bound = "up to " if calib else ""
        total = f"{bound}~{_minutes(seconds)} on 2 CPU cores" if seconds else "unknown"
        total += " + models of unknown speed" if unknown and seconds else ""
        console.print(f"estimated total {total} (cells, calibration and probe training), plus labeling")
    else:
        console.print("estimated total unknown (no speed measurement for these models)" if run_unknown and not run_s
                      else f"estimated total {estimate} on 2 CPU cores, plus labeling")
    not_ready = []
    for model in suite.models:
        status, ready = weights_status(model, suite.samples)
        # One line each, never wrapped by rich (a path or an error to copy; the terminal wraps it)
        console.print(f"model {model.name}: {status}", soft_wrap=True)
        if not ready:
            not_ready.append(model.name)
    return not_ready


def _cell_costs(cells) -> dict[int, tuple[float, float | None]]:
    """Cost of each cell that generates images, by index: cells that do not apply, and cells
    whose images another setting already generates (see audit.run.generate.twin_cells), cost nothing."""
    costs, shared_seen = {}, set()
    for i, cell in enumerate(cells):
        if cell.skip_reason:
            continue
        if cell.shares_images:
            if cell.image_key in shared_seen:
                continue
            shared_seen.add(cell.image_key)
        costs[i] = cell_cost(cell)
    return costs


def _seconds(values) -> tuple[float, bool]:
    """(sum of the known seconds, whether any was unknown)."""
    return sum(v for v in values if v is not None), any(v is None for v in values)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _time(seconds: float | None) -> str:
    return "?" if seconds is None else _minutes(seconds)


def _print_cells(suite: Suite, cells, costs, console) -> None:
    """One row per cell (`--verbose`)."""
    table = Table(title=f"suite {suite.name}: {len(cells)} cells")
    for column in ("#", "model", "method", "attributes", "target", "prompt", "samples", "UNet evals", "est. time"):
        table.add_column(column)
    for i, cell in enumerate(cells):
        row = [str(i), cell.model.name, cell.method.display, cell.setting.key, cell.setting.target_label,
               cell.prompt or ""]
        if cell.skip_reason:
            table.add_row(*row, "-", "-", f"skipped: {cell.skip_reason}")
        elif i not in costs:
            table.add_row(*row, str(cell.samples), "0", "shared")
        else:
            nfe, seconds = costs[i]
            table.add_row(*row, str(cell.samples), f"{nfe:,.0f}", _time(seconds))
    console.print(table)


def _print_groups(suite: Suite, cells, costs, console) -> None:
    """One row per model and method: cells to run (of which sharing another's images), cells
    that do not apply (the reasons below the table), samples, UNet evaluations, time."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, cell in enumerate(cells):
        groups.setdefault((cell.model.name, cell.method.display), []).append(i)
    table = Table(title=f"suite {suite.name}: {len(cells)} cells", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False)
    table.add_column("model / method", overflow="fold")
    for column in ("cells", "samples", "UNet\nevals", "est.\ntime"):
        table.add_column(column, justify="right", no_wrap=True)
    reasons: dict[str, list[str]] = {}
    model = None
    for (model_name, method), indices in groups.items():
        if model_name != model:
            model = model_name
            table.add_row(Text(model_name, style="bold"), "", "", "", "")
        run = [i for i in indices if not cells[i].skip_reason]
        skipped = [i for i in indices if cells[i].skip_reason]
        shared = [i for i in run if i not in costs]
        text = str(len(run)) + (f" ({len(shared)} shared)" if shared else "")
        if skipped:
            text = (f"{text} + " if run else "") + f"{len(skipped)} n/a"
            for i in skipped:
                reasons.setdefault(cells[i].skip_reason, [])
                label = f"{method} on {model_name}"
                if label not in reasons[cells[i].skip_reason]:
                    reasons[cells[i].skip_reason].append(label)
        nfe = sum(costs[i][0] for i in run if i in costs)
        seconds, unknown = _seconds([costs[i][1] for i in run if i in costs])
        table.add_row(f"  {method}", text, f"{sum(cells[i].samples for i in run if i in costs):,}" if run else "-",
                      f"{nfe:,.0f}" if run else "-",
                      "-" if not run else ("?" if unknown and not seconds else _minutes(seconds)))
    console.print(table)
    for reason, where in reasons.items():
        console.print(f"n/a ({', '.join(where)}): {reason}")


def _calibration_config(cell, suite: Suite, n: int) -> dict | None:
    """The calibration config of a `scale: auto` cell less the model revision and probe
    accuracies that only loading tells (audit.run.calibration.unloaded_config): None when the
    cell's method does not calibrate."""
    from audit.registry import METHODS, effective_params, resolve
    from audit.run.calibration import unloaded_config

    factory = resolve(METHODS, cell.method.name, "method")
    params = dict(cell.method.params)
    if not factory.calibrates_scale or effective_params(factory, params).get("scale") != "auto":
        return None
    return json.loads(json.dumps(unloaded_config(suite, cell, factory, params, n), default=str))


def _known_calibrations(cell, suite: Suite, out: Path | None) -> list[dict]:
    """Configs of the calibration records a run of this cell's model could use: the zoo's
    shipped ones and those cached in OUT/calibration."""
    from audit.run.calibration import shipped_calibration

    folders = []
    shipped = shipped_calibration(cell.model.source, "x.json")
    if shipped is not None:
        folders.append(shipped.parent)
    if out is not None:
        folders.append(Path(out) / "calibration")
    configs = []
    for folder in folders:
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                config = json.loads(path.read_text())["config"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            configs.append(json.loads(json.dumps(config, default=str)))
    return configs


def calibration_cost(suite: Suite, cells, out: Path | None = None) -> tuple[list, list[str]]:
    """([(UNet evaluations, seconds or None)] of the calibrations a run would make, lines to
    print). A `scale: auto` cell costs nothing when a shipped or cached record of the same config
    exists (its revision and probes are checked when the run loads the model); otherwise up to
    the most a search may generate (every grid scale plus the aim corrections)."""
    from audit.run.calibration import EARLIER_RULES, RULE, calibration_samples, most_images

    auto, costs, seen, known = 0, [], set(), {}
    for cell in cells:
        if cell.skip_reason:
            continue
        n = calibration_samples(len(cell.setting.target_vector()))
        config = _calibration_config(cell, suite, n)
        if config is None:
            continue
        key = json.dumps(config, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        auto += 1
        if cell.model.name not in known:
            known[cell.model.name] = _known_calibrations(cell, suite, out)
        bare = {k: v for k, v in config.items() if k != "rule"}
        if any(c.get("rule") in (RULE, *EARLIER_RULES) and
               {k: v for k, v in c.items() if k not in ("revision", "probes", "rule")} == bare
               for c in known[cell.model.name]):
            continue
        images = most_images(n)
        nfe, seconds = cell_cost(cell.model_copy(update={"samples": images}))
        costs.append((nfe, seconds))
    if not auto:
        return [], []
    if not costs:
        return [], [f"calibration: all {auto} scale: auto calibrations shipped or cached (no cost)"]
    nfe = sum(c[0] for c in costs)
    seconds, unknown = _seconds([c[1] for c in costs])
    time = "time unknown" if unknown and not seconds else f"up to ~{_minutes(seconds)}"
    return costs, [f"calibration: {len(costs)} of {auto} scale: auto calibrations to make, up to {nfe:,.0f} "
                   f"UNet evaluations, {time}"]


def probe_cost(suite: Suite, cells, out: Path | None = None) -> tuple[list, list[str]]:
    """([(UNet evaluations, seconds or None)] of the probe trainings a run would make, lines to
    print): probe.n samples per model (and prompt) whose probe-guided cells find no probes the
    model's source ships or OUT/probes caches (see runner.probe_dir)."""
    from audit.probes.probe import Probe

    labeler = suite.probe_labeler
    wanted: dict[tuple[str, str | None], tuple] = {}
    for cell in cells:
        if cell.skip_reason or not cell.method_class.needs_probe:
            continue
        key = (cell.model.name, cell.prompt)
        attributes = wanted.get(key, (cell, set()))[1] | set(cell.setting.attributes)
        wanted[key] = (cell, attributes)
    costs, lines, shipped = [], [], 0
    per_model: dict[str, list] = {}
    for (name, prompt), (cell, attributes) in wanted.items():
        model = cell.model
        folders = []
        ships = model.shipped_probes(labeler, prompt)
        if ships is not None:
            folders.append(ships)
        if out is not None:
            base = Path(out) / "probes" / name / labeler
            for d in base.glob(f"steps{model.steps}-cfg{model.guidance_scale:g}*"):
                folders += [d] if prompt is None else list(d.glob("prompt-*"))
        if any(all(Probe.saved(f / a) for a in attributes) for f in folders):
            shipped += 1
            continue
        cfg = 2.0 if model.guidance_scale != 1.0 else 1.0
        nfe = suite.probe.n * model.steps * cfg
        per = model.seconds_per_image_step()
        costs.append((nfe, nfe * per if per else None))
        per_model.setdefault(name, []).append(costs[-1])
    for name, trainings in per_model.items():
        nfe = sum(c[0] for c in trainings)
        seconds, unknown = _seconds([c[1] for c in trainings])
        sets = f"{len(trainings)} prompts x " if len(trainings) > 1 else ""
        time = "time unknown" if unknown and not seconds else f"~{_minutes(seconds)}"
        lines.append(f"probe training for {name}: {sets}{suite.probe.n} samples, {nfe:,.0f} UNet evaluations, "
                     f"{time}")
    if shipped and not costs:
        lines.append("probes: shipped or cached for every probe-guided cell (no training)")
    return costs, lines


def weights_status(model, samples: int | None = None) -> tuple[str, bool]:
    """Where a model's weights are, or why they are missing, and whether a run could load them (a
    dry run never loads them)."""
    from audit.models.loading import PickledWeights, check_weight_format, resolve_weights
    from audit.sources import ModelNotAvailable

    if model.source.startswith("custom:"):
        return "a custom model registered in this process (loaded by its factory)", True
    if model.finished_images:
        from audit.image_folder import summary

        return summary(model.source, samples, model.prompts), True
    try:
        path, _ = resolve_weights(model.source, model.revision)
    except ModelNotAvailable as missing:
        return f"weights missing: {missing}", False
    try:
        check_weight_format(model, path)
    except PickledWeights as pickled:
        return f"weights found at {_short(path)} but refused: {pickled}", False
    return f"weights found at {_short(path)}", True


def _short(path) -> str:
    """A path relative to the working directory when it lies inside it (shorter on a terminal)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (OSError, ValueError):
        return str(path)


def _num(value, spec: str = ".3f") -> str:
    """A number for the table, or "" when it is missing (None or NaN: nothing was measured)."""
    return "" if value is None or pd.isna(value) else format(value, spec)


def print_summary(frame: pd.DataFrame, console) -> None:
    """The results table, grouped by model. Every value may be missing (a cell with no valid
    sample has no FD, a cell without timings no speed): such a cell says why instead of a number.
    It fits an 80-column terminal: each cell takes two lines (method, then attributes; FD, then
    its interval; verdict, then the samples that would decide it), a labeler or target shared by
    every row goes in the title, and KL, labeler and speed columns appear from 120 columns on."""
    wide = console.width >= 120
    labelers = {v for v in frame.get("labeler", pd.Series(dtype=object)).dropna() if v}
    targets = set(frame["target"].dropna()) if "target" in frame else set()
    shared = ([f"labeler {next(iter(labelers))}"] if len(labelers) == 1 else []) + (
        [f"target {next(iter(targets))}"] if len(targets) == 1 else [])
    title = "results" + (f" ({', '.join(shared)})" if shared else "")
    prompts = frame.groupby("model")["prompt"].nunique() if "prompt" in frame else pd.Series(dtype=int)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("method / attributes", overflow="fold")
    if wide and len(labelers) > 1:
        table.add_column("labeler", overflow="fold")
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("FD [95% CI]", overflow="fold")
    table.add_column("verdict", overflow="fold")
    if wide:
        table.add_column("KL", justify="right", no_wrap=True)
    table.add_column("FID", justify="right", no_wrap=True)
    if wide:
        table.add_column("img/s", justify="right", no_wrap=True)
    model = None
    for row in frame.itertuples():
        if row.model != model:
            model = row.model
            table.add_row(Text(str(model), style="bold"), end_section=False)
        what = f"{row.method}\n  {row.attributes}"
        if len(targets) > 1:
            what += f" -> {row.target}"
        prompt = getattr(row, "prompt", None)
        if isinstance(prompt, str) and prompt and prompts.get(row.model, 0) > 1:
            what += f"\n  {prompt!r}"
        if len(labelers) > 1 and not wide and isinstance(row.labeler, str) and row.labeler:
            what += f"\n  by {row.labeler}"
        cells = [Text(what)]
        if wide and len(labelers) > 1:
            cells.append(row.labeler if isinstance(row.labeler, str) else "")
        if row.status != "done":
            cells += ["", str(row.status).replace("_", " "), ""] + ([""] if wide else []) + [""] + (
                [""] if wide else [])
            table.add_row(*cells)
            continue
        if _num(row.fd):
            fd = f"{row.fd:.3f}\n[{_num(row.fd_lo)}, {_num(row.fd_hi)}]"
        else:
            reasons = getattr(row, "invalid_reasons", None)
            fd = "not measured: no valid sample" + (f" ({reasons})" if isinstance(reasons, str) and reasons else "")
        cells += [f"{_num(row.n_valid, '.0f') or '?'}/{_num(row.n, '.0f')}", fd, _verdict(row, "\n")]
        if wide:
            cells.append(_num(row.kl))
        cells.append(_num(row.fid, ".2f"))
        if wide:
            cells.append(_num(row.images_per_s, ".1f"))
        table.add_row(*cells)
    console.print(table)


def _verdict(row, sep: str = " ") -> str:
    """on target / off target / inconclusive (with the samples that would decide it)."""
    verdict = getattr(row, "verdict", None)
    if not isinstance(verdict, str):
        return ""
    needed = _num(getattr(row, "samples_needed", None), ".0f")
    return verdict.replace("_", " ") + (f"{sep}(needs ~{needed})" if verdict == "inconclusive" and needed else "")
