"""Automatic scale calibration for the probe-guided methods (`scale: auto`).

On one calibration batch (seeds disjoint from every evaluation seed) a geometric grid of scales
is tried; the chosen scale is the smallest whose batch ends, by the probe's own prediction at
the last step, within `goal` of the target (FD), else the one that ends closest. Only the
method's own probe is consulted, never an evaluation labeler. Results are cached per
(model, method, setting, steps, batch size) in OUT/calibration/.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from audit.spec import DEFAULT_PROMPT
from audit.store import atomic_write_json, inside

CALIBRATION_SEED = 20_000_000
GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def calibrated_scale(ctx, cell, factory, probes, target, params: dict, goal: float = 0.02) -> float:
    config = {"model": cell.model.model_dump(), "method": cell.method.name, "params": params,
              "attributes": cell.setting.attributes, "target": list(target), "batch": cell.batch_size,
              "probes": [p.meta.get("val_accuracy", [])[:3] for p in probes], "prompt": cell.prompt}
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = inside(ctx.store.out, Path("calibration") / f"{cell.model.name}-{cell.method.name}-{key}.json")
    if cache.exists():
        return float(json.loads(cache.read_text())["scale"])
    adapter = ctx.adapter(cell)
    seeds = list(range(CALIBRATION_SEED, CALIBRATION_SEED + min(cell.batch_size, 64)))
    prompts = [cell.prompt or DEFAULT_PROMPT] * len(seeds) if adapter.conditional else None
    tried = []
    for scale in GRID:
        method = factory(probes=probes, target=target, **{**params, "scale": scale})
        method.start_cell(seeds)
        out = adapter.generate(seeds, prompts=prompts, steps=cell.model.steps,
                               guidance_scale=cell.model.guidance_scale, method=method, record_h=True)
        from audit.probes.probe import joint_probs

        h_last = out.h[-1].view(len(seeds), *_h_shape(adapter))
        p_hat = joint_probs(probes, h_last, probes[0].timesteps[-1]).mean(0).numpy()
        fd = float(np.linalg.norm(p_hat - np.asarray(target)))
        tried.append({"scale": scale, "probe_fd": fd, "p_hat": p_hat.round(4).tolist()})
        ctx.log(f"calibrating {cell.method.name} on {cell.model.name}/{cell.setting.key}: "
                f"scale {scale:g} -> probe FD {fd:.3f}")
        if fd <= goal:
            break
    best = next((t for t in tried if t["probe_fd"] <= goal), min(tried, key=lambda t: t["probe_fd"]))
    atomic_write_json(cache, {"scale": best["scale"], "goal": goal, "tried": tried, "config": config})
    return float(best["scale"])


def _h_shape(adapter):
    from audit.models.hspace import h_shape

    return h_shape(adapter.unet)
