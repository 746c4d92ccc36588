"""h-space probes for a cell: those a model's source ships (checked against the weights they
were trained on), else trained on demand with the suite's probe labeler and cached in OUT/probes."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

from audit.files import inside
from audit.run.calibration import clock
from audit.run.context import RunContext
from audit.spec import DEFAULT_PROMPT, Cell, prompt_slug
from audit.stages import reached


def probe_dir(ctx: RunContext, cell: Cell, attribute: str) -> Path:
    """A probe the model's source ships (the zoo's), if it was trained on these weights and this
    guidance scale; else one trained on demand and cached in OUT/probes."""
    from audit.probes.probe import Probe

    model, labeler = cell.model, ctx.suite.probe_labeler
    revision = ctx.adapter(cell).revision
    folder = None if (model.hspace or model.hspace_pool) else model.shipped_probes(labeler, cell.prompt)
    shipped = None if folder is None else folder / attribute
    if shipped is not None and Probe.saved(shipped):
        meta = Probe.load(shipped).meta  # a damaged shipped probe is a one-line ProbeError
        trained_on = (meta.get("revision"), float(meta.get("guidance_scale", 1.0)))
        if trained_on == (revision, float(model.guidance_scale)):
            return shipped
        ctx.log(f"the shipped {attribute} probe was trained on {model.source} revision {trained_on[0]} with "
                f"guidance scale {trained_on[1]:g}, not {revision} with {model.guidance_scale:g}: "
                "training one for this setting")
    return inside(ctx.store.out, Path("probes") / model.name / labeler / sampling_key(model, revision, cell.prompt)
                  / attribute)


def sampling_key(model, revision: str | None, prompt: str | None) -> str:
    """The folder key of what was learnt from a model's own samples and their h (probes, unguided
    samples' clusters): its steps and guidance scale, the weights' revision, the h-space block when
    one is named, and the prompt (h depends on it)."""
    key = f"steps{model.steps}-cfg{model.guidance_scale:g}"
    if revision:
        key += f"-rev-{re.sub(r'[^A-Za-z0-9._-]+', '-', revision)[:40]}"
    if model.hspace or model.hspace_pool:  # read h where, and as, it was recorded
        key += f"-h-{re.sub(r'[^A-Za-z0-9._-]+', '-', model.hspace or 'default')[:40]}-pool{model.hspace_pool or 0}"
    if prompt is not None:
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
        key += f"/prompt-{prompt_slug(prompt)[:32].strip('-')}-{digest}"
    return key


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
                               guidance_scale=cell.model.guidance_scale,
                               progress=progress_lines(ctx.log, ctx.suite.probe.n, f"probes for {cell.model.name}"))
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


def unlabeled(labeler, attributes: list[str]) -> list[str]:
    """The attributes a labeler does not label."""
    return [a for a in attributes if a not in labeler.attributes]


def probe_labeler_gap(ctx: RunContext, cell: Cell) -> str | None:
    """Why a probe-guided cell cannot run: its probe labeler does not label its attributes."""
    if not cell.method_class.needs_probe:
        return None
    labeler = ctx.labeler(ctx.suite.probe_labeler)
    missing = unlabeled(labeler, cell.setting.attributes)
    if missing:
        return (f"probe labeler {labeler.name} does not label {', '.join(missing)}: set probe_labeler "
                f"to one that does")
    return None


def progress_lines(log, total: int, what: str, every: float = 0.1):
    """A progress callback (called with the samples just drawn) that logs, each `every` of
    `total`, how many are done and an ETA at this run's own pace: probe training draws and labels
    probe.n samples before any cell generates, minutes on a CPU."""
    start, state = time.perf_counter(), {"done": 0, "next": max(1, round(total * every))}

    def advance(k: int) -> None:
        state["done"] += int(k)
        done = state["done"]
        if done < state["next"] and done < total:
            return
        elapsed = time.perf_counter() - start
        log(f"{what}: {done}/{total} samples drawn and labelled, {clock(elapsed)} elapsed, "
            f"ETA {clock(elapsed / done * max(0, total - done))}")
        state["next"] = done + max(1, round(total * every))

    return advance
