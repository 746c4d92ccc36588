"""A cell's method: built from its suite params and what the runner supplies (Method.supplied),
with `scale: auto` calibrated first for the methods that calibrate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from audit.files import inside
from audit.registry import effective_params
from audit.run.context import RunContext
from audit.run.probes import get_probes, sampling_key
from audit.spec import DEFAULT_PROMPT, Cell, SuiteError


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


# What the runner can supply to a method's constructor: a method lists the names it takes in its
# `supplied` (audit.methods.base.Method); everything else it takes is a suite param.
SUPPLIED_ARGUMENTS = ("target", "attributes", "phrases", "attribute_names", "probes", "labeler", "unguided")


@dataclass
class UnguidedSamples:
    """The cell's model sampled without guidance, for a method that learns from it itself (instead
    of from probes trained on a labeler): `collect(n)` samples n images on seeds disjoint from every
    evaluation seed and records h at every step; `cache` is a folder in OUT keyed on the model, its
    revision, steps, guidance scale and prompt, where the method may keep what it derived; `labelers`
    are the suite's evaluation labelers, for describing what the method found (never for guiding)."""

    adapter: object
    prompt: str | None
    steps: int
    guidance_scale: float
    batch_size: int
    cache: Path
    labelers: list

    SEED_OFFSET = 10_000_000  # the probes' seeds: never an evaluation seed

    def collect(self, n: int, progress=None):
        """(H [steps, n, D], images [n, 3, H, W] in [0, 1], timesteps) of n unguided samples."""
        from audit.probes.train import collect

        prompts = [self.prompt or DEFAULT_PROMPT] * n if self.adapter.conditional else None
        return collect(self.adapter, list(range(self.SEED_OFFSET, self.SEED_OFFSET + n)), self.steps,
                       self.batch_size, prompts, self.guidance_scale, progress)


def unguided_samples(ctx: RunContext, cell: Cell) -> UnguidedSamples:
    model, adapter = cell.model, ctx.adapter(cell)
    key = Path(model.name) / sampling_key(model, adapter.revision, cell.prompt)
    return UnguidedSamples(adapter=adapter, prompt=cell.prompt, steps=model.steps,
                           guidance_scale=model.guidance_scale, batch_size=ctx.suite.probe.batch_size,
                           cache=inside(ctx.store.out, Path("unguided") / key),
                           labelers=[ctx.labeler(name) for name in ctx.suite.labelers])


def supplied_arguments(ctx: RunContext, cell: Cell, factory, params: dict) -> dict:
    """The constructor arguments the method declares in `supplied`, made from the cell: the target
    vector, the attributes, one prompt phrase per joint class (and the attributes named in words),
    h-space probes of the cell's attributes, a labeler (the method's `labeler` param, default
    the suite's probe_labeler; the param is consumed), or the model to sample unguided
    (UnguidedSamples)."""
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
        args["phrases"] = ctx.suite.class_phrases(setting)
    if "attribute_names" in wanted:
        args["attribute_names"] = " and ".join(a.replace("_", " ") for a in setting.attributes)
    if "probes" in wanted:
        args["probes"] = get_probes(ctx, cell)
    if "labeler" in wanted:
        args["labeler"] = ctx.labeler(params.pop("labeler", None) or ctx.suite.probe_labeler)
    if "unguided" in wanted:
        args["unguided"] = unguided_samples(ctx, cell)
    return args


def build_method(ctx: RunContext, cell: Cell):
    """The cell's method, built from its suite params and what the runner supplies; a `scale: auto`
    of a method that calibrates its scale is replaced by the calibrated one (or, for a cell killed
    mid-way, by the scale its finished batches were made with)."""
    spec, params, factory = cell.method, dict(cell.method.params), cell.method_class
    supplied = supplied_arguments(ctx, cell, factory, params)
    if factory.calibrates_scale and effective_params(factory, params).get("scale") == "auto":
        from audit.run.calibration import calibrate

        _construct(factory, spec, {**supplied, **params, "scale": 1.0})  # fail fast
        calibrated = _calibration_of_started_cell(ctx, cell) or calibrate(ctx, cell, factory, supplied, params)
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
