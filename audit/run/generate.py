"""A cell's images, generated where missing or stale and resumed seed by seed (or batch by batch
for methods that couple a batch's samples)."""

from __future__ import annotations

import time

import torch

from audit.run.context import RunContext
from audit.spec import DEFAULT_PROMPT, Cell, SuiteError, plan
from audit.store import image_problem


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
    for twin in [t.cell_id for t in twin_cells(ctx, cell)] if (todo and cell.shares_images) else []:
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


def fits(cell: Cell, unit: list[int], found: list, wanted: dict | None, legacy_samples: int | None = None) -> bool:
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
    if not fits(cell, unit, [claims.get(s) for s in unit], wanted):
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
    made = f"generated {cell.cell_id} batch {index} ({len(seeds)} images, seeds {span}, {seconds:.2f}s)"
    if getattr(adapter, "finished", False):  # copied from an image folder: their generation cost is unknown
        made, seconds = f"copied {len(seeds)} images of {cell.model.source} into {cell.cell_id} batch {index} " \
                        f"(seeds {span})", 0.0
    ctx.store.write_batch(cell.cell_id, index, seeds, prompts, out.images, seconds, out.stats,
                          choices=[wanted[s][1] for s in seeds] if with_choices else None, samples=cell.samples,
                          event=made)
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


def twin_cells(ctx: RunContext, cell: Cell) -> list[Cell]:
    """Cells of the suite that make the same images as `cell`: they differ only in the part of
    their attribute setting the method does not read (Method.images_setting)."""
    return [c for c in plan(ctx.suite) if c.cell_id != cell.cell_id and c.image_key == cell.image_key]


def unusable_images(ctx: RunContext, cell: Cell) -> set[int]:
    """Seeds whose sample came out NaN/inf (the adapter stored them black and listed them in
    their batch's marker)."""
    return {int(s) for b in ctx.store.batches(cell.cell_id) for s in (b.get("stats") or {}).get("nonfinite_seeds", [])}
