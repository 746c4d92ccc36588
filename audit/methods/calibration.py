"""Automatic scale calibration for the probe-guided methods (`scale: auto`).

On calibration seeds disjoint from every evaluation seed (64 per target class, at least 128),
sampled in the cell's own batch size, a geometric grid of scales is walked upward until it
passes the optimum or stops making progress (up to 64: attributes the model's h encodes weakly,
skin tone on synthfaces-t2i, still improve at 16). Each batch's final images are labelled by the
suite's probe labeler (the labeler the probes learnt from, never an evaluation labeler), and the
chosen scale minimises the FD of the class shares interpolated between the tried scales
(`interpolated_scale`), or, with the method param `auto_tolerance` (opt-in), is the smallest
scale within that many times the FD's sampling noise of the best (`smallest_scale_within`).
Where the chosen scale still misses the target by more than sampling noise explains, the aim is
corrected next (`corrected_aim`): guidance aims at a distribution moved by
the shrunk miss, kept only when it lands nearer on the same seeds. Aims are judged on AIM_SAMPLES
times the walk's seeds: the joint skin tone x eyeglasses miss (FD ~0.15 on synthfaces-ddpm) read
~0.09 on the walk's 256 seeds, the aim corrected by that estimate left FD 0.071 on 1,000 evaluation
seeds, and a lucky 0.023 on the 256 stopped further correction. Judging images rather than the
probe matters: at the last step the probe sees the h that guidance itself has just edited, so it
always reports success. Records are
cached per (model revision, method, setting, steps, batch size) in OUT/calibration/ and may be
shipped with the zoo (`ship_calibrations`). A trial is deterministic, so when only the walk's rule
changes, the trials of an earlier record of the same cell are reused rather than regenerated.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from audit.files import atomic_write_json, inside
from audit.registry import effective_params
from audit.spec import DEFAULT_PROMPT
from audit.stages import reached

CALIBRATION_SEED = 20_000_000
GRID = (1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 16.0, 32.0, 64.0)  # walked upward; most calibrated scales fell in 2-7
BELOW = (0.5, 0.25)  # tried only when the smallest grid scale is already the best
PATIENCE = 3  # stop when this many larger scales brought no progress (guidance without effect)
AIM_STEPS = 2  # aim corrections tried at the chosen scale
AIM_SAMPLES = 4  # aims are judged on this many times the walk's seeds (sampling noise halved)
# Bump RULE when the walk or the choice changes: records are keyed on it.
RULE = f"images, interpolated, grid to 64, aim corrected on {AIM_SAMPLES}x seeds"


def calibration_samples(k: int) -> int:
    """Calibration seeds for a target over k (joint) classes: 64 per class, at least 128, so FD's
    sampling noise stays near 0.06 (with 128 seeds it was 0.077 for 4 classes, and the
    4-class hair colour calibration chose 4.64 where 4.0 measured FD 0.062 and 4.64 0.081)."""
    return max(128, 64 * k)


def calibrate(ctx, cell, factory, probes, target, params: dict, n: int | None = None) -> dict:
    """{"scale": ..., "aim": ...} for the cell: the aim is None where the target itself is aimed at."""
    from audit.metrics.functional import joint_labels

    n = n or calibration_samples(len(target))

    adapter = ctx.adapter(cell)
    config = calibration_config(ctx, cell, factory, probes, target, params, n)
    record = record_name(config)
    cache = inside(ctx.store.out, Path("calibration") / f"{cell.model.name}-{record}")
    shipped = shipped_calibration(cell.model.source, record)
    if not cache.exists() and shipped is not None and shipped.exists():
        ctx.log(f"{cell.method.name} on {cell.model.name}/{cell.setting.key}: using the zoo's calibrated scale")
        atomic_write_json(cache, json.loads(shipped.read_text()))
    partial = inside(ctx.store.out, Path("calibration") / "partial" / cache.name)
    if cache.exists():
        record = json.loads(cache.read_text())
        partial.unlink(missing_ok=True)  # a kill between the record and this cleanup left it
        return {"scale": float(record["scale"]), "aim": record.get("aim")}
    judge = ctx.labeler(ctx.suite.probe_labeler)
    seeds = list(range(CALIBRATION_SEED, CALIBRATION_SEED + AIM_SAMPLES * n))  # the walk uses the first n
    prompts = [cell.prompt or DEFAULT_PROMPT] * len(seeds) if adapter.conditional else None
    target = np.asarray(target, dtype=float)
    noise = float(np.sqrt((target * (1 - target)).sum() / n))  # FD's sampling spread at the target
    tried = []
    earlier = earlier_trials(config, [cache.parent, shipped.parent] if shipped is not None else [cache.parent])
    finished = resumable_measurements(partial, config)  # of a calibration killed before its record

    def measure(scale: float, aim: np.ndarray | None = None, count: int = n) -> dict:
        aimed = {} if aim is None else {"aim": aim.tolist()}
        key = measurement_key(scale, aimed.get("aim"), count)
        if key in finished:
            say(f"scale {scale:g}{' aimed' if aimed else ''} on {count} seeds: kept from an interrupted calibration")
            return finished[key]
        method = factory(probes=probes, target=target, **{**params, "scale": scale, **aimed})
        method.start_cell(seeds[:count])
        images, finite = [], []
        for i in range(0, count, cell.batch_size):
            end = min(i + cell.batch_size, count)
            out = adapter.generate(seeds[i:end], prompts=None if prompts is None else prompts[i:end],
                                   steps=cell.model.steps, guidance_scale=cell.model.guidance_scale, method=method,
                                   eta=cell.model.eta)
            images.append(out.images)
            finite.append(out.finite)
        images = torch.cat(images)
        labels = judge.label(images)
        flat = images.flatten(1)  # a non-finite (stored black) or flat image is no sample of any class
        valid = labels.valid & torch.cat(finite).numpy() & (flat.amax(1) > flat.amin(1)).numpy()
        joint, k = joint_labels([labels.hard(a)[valid] for a in cell.setting.attributes],
                                [len(judge.attributes[a]) for a in cell.setting.attributes])
        p_hat = np.bincount(joint, minlength=k) / max(1, len(joint))
        result = {"scale": scale, **aimed, "n": count, "fd": float(np.linalg.norm(p_hat - target)),
                  "p_hat": p_hat.round(4).tolist()}
        finished[key] = result
        atomic_write_json(partial, {"config": config, "measurements": list(finished.values())})
        reached("calibration-trial")
        return result

    def say(message: str) -> None:
        ctx.log(f"calibrating {cell.method.name} on {cell.model.name}/{cell.setting.key}: {message}")

    def trial(scale: float) -> float:
        result, source = earlier.get(scale), "an earlier record's trial"
        if result is None:
            result, source = measure(scale), f"judged by {judge.name}"
        tried.append(result)
        say(f"scale {scale:g} -> FD {result['fd']:.3f} ({source})")
        return result["fd"]

    for scale in GRID:
        fd = trial(scale)
        fds = [t["fd"] for t in tried]
        if fd > min(fds) + 2 * noise:  # past the optimum: larger scales only overshoot further
            break
        if len(fds) > PATIENCE and min(fds[-PATIENCE:]) > min(fds[:-PATIENCE]) - noise / 2:
            break  # no progress: guidance barely moves this model's images
    if min(tried, key=lambda t: t["fd"])["scale"] == GRID[0]:
        for scale in BELOW:  # already over-guided at the smallest grid scale
            if trial(scale) > min(t["fd"] for t in tried) + 2 * noise:
                break
    tolerance = float(params.get("auto_tolerance") or 0.0)
    chosen = smallest_scale_within(tried, target, tolerance * noise) if tolerance else interpolated_scale(tried, target)
    aim, aimed = None, []
    if params.get("aim") is None and min(t["fd"] for t in tried) > noise:
        count = AIM_SAMPLES * n
        aim_noise = noise / np.sqrt(AIM_SAMPLES)
        best = measure(chosen, count=count)
        say(f"chosen scale {chosen:g} -> FD {best['fd']:.3f} on {count} seeds (sampling noise {aim_noise:.3f})")
        aimed.append(best)
        for _ in range(AIM_STEPS):
            candidate = corrected_aim(np.asarray(best.get("aim", target)), np.asarray(best["p_hat"]), target,
                                      aim_noise)
            if candidate is None:
                break
            aimed.append(measure(chosen, candidate, count=count))
            say(f"scale {chosen:g} aimed at {np.round(candidate, 3).tolist()} -> FD {aimed[-1]['fd']:.3f} "
                f"(was {best['fd']:.3f})")
            if aimed[-1]["fd"] >= best["fd"]:
                break
            best = aimed[-1]
        aim = best.get("aim")
    atomic_write_json(cache, {"scale": chosen, "aim": aim, "noise": noise, "tried": tried, "aimed": aimed,
                              "config": config})
    partial.unlink(missing_ok=True)
    return {"scale": chosen, "aim": aim}


def measurement_key(scale: float, aim: list | None, count: int) -> str:
    return json.dumps([float(scale), aim, int(count)])


def resumable_measurements(partial: Path, config: dict) -> dict[str, dict]:
    """The measurements (walk trials and aims) a calibration of the same config finished before it
    was killed or interrupted, by (scale, aim, seeds): each is deterministic (fixed seeds, weights,
    params and judge), so the re-run continues from them and chooses what the run would have.
    Kept in OUT/calibration/partial/ (not beside the records: ship_calibrations and earlier_trials
    read those as finished) and removed once the record is written."""
    try:
        data = json.loads(partial.read_text())
    except (OSError, ValueError):
        return {}
    same = lambda c: json.dumps(c, sort_keys=True, default=str)  # noqa: E731  (NaN accuracies compare equal)
    if not isinstance(data, dict) or same(data.get("config")) != same(config):
        return {}
    return {measurement_key(m["scale"], m.get("aim"), m["n"]): m for m in data.get("measurements", [])}


def corrected_aim(aim: np.ndarray, p_hat: np.ndarray, target: np.ndarray, noise: float) -> np.ndarray | None:
    """The next aim: `aim` moved by the miss (target - p_hat) shrunk by the share of it that
    sampling noise would explain (positive-part James-Stein: 1 - noise^2 / FD^2), so a miss
    within the noise changes nothing (None) and only a systematic miss is corrected."""
    miss = np.asarray(target, dtype=float) - p_hat
    fd = float(np.linalg.norm(miss))
    shrink = 1 - (noise / fd) ** 2 if fd > 0 else 0.0
    if shrink <= 0:
        return None
    moved = np.clip(aim + shrink * miss, 0, None)
    return moved / moved.sum()


def calibration_config(ctx, cell, factory, probes, target, params: dict, n: int) -> dict:
    """Everything a calibrated scale depends on (the model's weights by revision, not its name;
    the method's params with its defaults filled in)."""
    params = effective_params(factory, params)
    if params.get("aim") is None:
        params.pop("aim", None)  # aimed at the target itself, as every record before aims existed
    # eta 0 = unset; allow_pickle only says which weight files may load (the revision names the weights)
    model = cell.model.model_dump(exclude={"name", "allow_pickle"} | (set() if cell.model.eta else {"eta"}))
    return {"model": model, "revision": ctx.adapter(cell).revision,
            "method": cell.method.name, "params": params,
            "attributes": cell.setting.attributes, "target": [float(v) for v in target], "batch": cell.batch_size,
            "probes": [p.meta.get("val_accuracy", [])[:3] for p in probes], "prompt": cell.prompt,
            "judge": ctx.suite.probe_labeler, "n": n, "rule": RULE}


def earlier_trials(config: dict, folders: list[Path]) -> dict[float, dict]:
    """Trials of records that differ from `config` only in how the scale is chosen (the
    calibration rule, `auto_tolerance`), by scale: the same seeds, weights, method params and
    judge give the same images and FD."""
    def walk(c: dict) -> dict:
        params = {k: v for k, v in (c.get("params") or {}).items() if k != "auto_tolerance"}
        return json.loads(json.dumps({**{k: v for k, v in c.items() if k != "rule"}, "params": params}, default=str))

    same = walk(config)
    trials = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*.json")):
            data = json.loads(path.read_text())
            other = data.get("config", {})
            if other != config and walk(other) == same:
                trials.update({float(t["scale"]): t for t in data.get("tried", [])})
    return trials


def record_name(config: dict) -> str:
    """A calibration record's file name: the method and a hash of everything the scale depends on."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{config['method']}-{key}.json"


def shipped_calibration(source: str, record: str) -> Path | None:
    """Where the model's source ships a calibration record (see `ship_calibrations`), or None
    when it ships none."""
    from audit.registry import model_source

    owner = model_source(source)
    folder = owner[0].shipped_calibrations(owner[1]) if owner else None
    return None if folder is None else Path(folder) / record


def usable(config: dict, revision: str) -> bool:
    """Whether a record can still be used: made on these weights, by the current rule."""
    return config.get("revision") == revision and config.get("rule") == RULE


def ship_calibrations(run_dir: Path, revisions: dict[str, str]) -> list[Path]:
    """Copy a run's calibration records of models whose source ships calibrations (the zoo's) to
    where it ships them, so suites on those models (the quickstart) start calibrated; records of
    other revisions of those models, or of an earlier calibration rule, are removed (they can never
    be used again). `revisions` maps model sources (`zoo:NAME`) to their current revision;
    returns the files written."""
    written = []
    for path in sorted((Path(run_dir) / "calibration").glob("*.json")):
        data = json.loads(path.read_text())
        config = data["config"]
        source = config["model"].get("source", "")
        dest = shipped_calibration(source, record_name(config))
        if source not in revisions or dest is None or not usable(config, revisions[source]):
            continue  # not a model that ships calibrations, calibrated on other weights, or by an earlier rule
        atomic_write_json(dest, data)
        written.append(dest)
    for source, revision in revisions.items():
        folder = shipped_calibration(source, "")
        for old in folder.glob("*.json") if folder is not None else []:
            if not usable(json.loads(old.read_text())["config"], revision):
                old.unlink()
    return written


def smallest_scale_within(tried: list[dict], target: np.ndarray, slack: float, points_per_interval: int = 8) -> float:
    """The smallest scale whose class shares, interpolated linearly in log(scale) between
    neighbouring tried scales, lie within `slack` (an FD) of the best tried FD (`auto_tolerance`
    times the FD's sampling noise on the calibration seeds). Minimising FD alone buys gains
    within sampling noise with large scales, which is where image quality goes: on the joint skin
    tone x eyeglasses target, `push: assign` walked 0.079 at 4.0, 0.063 at 8.0, 0.061 at 16.0 (noise
    0.054) and chose 16, FID to target 13.3 where the paper's push at 4.0 had 5.0."""
    tried = sorted(tried, key=lambda t: t["scale"])
    target = np.asarray(target, dtype=float)
    fds = [np.linalg.norm(np.asarray(t["p_hat"], dtype=float) - target) for t in tried]
    bound = min(fds) + slack
    if fds[0] <= bound:
        return float(tried[0]["scale"])
    for low, high in zip(tried, tried[1:], strict=False):
        fine = np.linspace(np.log(low["scale"]), np.log(high["scale"]), points_per_interval + 1)
        shares = np.stack([np.interp(fine, np.log([low["scale"], high["scale"]]), [a, b])
                           for a, b in zip(low["p_hat"], high["p_hat"], strict=True)], axis=1)
        inside_bound = np.flatnonzero(np.linalg.norm(shares - target, axis=1) <= bound + 1e-12)
        if inside_bound.size:
            return float(np.round(np.exp(fine[inside_bound[0]]), 3))
    raise AssertionError("unreachable: the best tried scale is within its own bound")


def interpolated_scale(tried: list[dict], target: np.ndarray, points_per_interval: int = 8) -> float:
    """The scale whose class shares, interpolated linearly in log(scale) between the tried
    scales next to the best tried one, lie closest to the target. The neighbours inform the
    choice, which may fall between grid points (on the joint skin tone x eyeglasses target the
    optimum lay between 2.0 and 2.8). Farther intervals are not used: shares are far from linear
    across them, and with 4 classes the straight line from an overshoot at 8 to a collapse at 16
    passed near uniform (hair colour: 8.8 chosen, where the best tried scale was 4.0)."""
    tried = sorted(tried, key=lambda t: t["scale"])
    target = np.asarray(target, dtype=float)
    best = int(np.argmin([np.linalg.norm(np.asarray(t["p_hat"]) - target) for t in tried]))  # first on ties
    tried = tried[max(0, best - 1):best + 2]
    if len(tried) == 1:
        return float(tried[0]["scale"])
    log_scales = np.log([t["scale"] for t in tried])
    shares = np.array([t["p_hat"] for t in tried], dtype=float)
    fine = np.linspace(log_scales[0], log_scales[-1], points_per_interval * (len(tried) - 1) + 1)
    curves = np.stack([np.interp(fine, log_scales, shares[:, c]) for c in range(shares.shape[1])], axis=1)
    fd = np.linalg.norm(curves - target, axis=1)
    return float(np.round(np.exp(fine[int(fd.argmin())]), 3))  # the smallest scale on ties
