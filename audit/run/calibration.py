"""Automatic scale calibration (`scale: auto`) for the methods that calibrate their scale (the
probe-guided ones and semantic guidance: Method.calibrates_scale).

On calibration seeds disjoint from every evaluation seed (64 per target class, at least 128),
sampled in the cell's own batch size, the chosen scale minimises the FD of the class shares
interpolated between the full trials next to the best one (`interpolated_scale`), or, with the
method param `auto_tolerance` (opt-in), is the smallest scale within that many times the FD's
sampling noise of the best (`smallest_scale_within`). Each trial's final images are labelled by
the suite's probe labeler (the labeler the probes learnt from, never an evaluation labeler).

The search (`search`) spends all the seeds only where the choice is made. A trial generates the
seeds batch by batch, so its first batches are exactly the images its full version starts with:
the earlier rules' walk (upward from 1 until it passes the optimum or stops making progress; up to
64: attributes a model's h encodes weakly still improve at 16, see docs/methods.md) runs
on the first COARSE_SEEDS seeds in factors of 2, then the best walked scale and its sqrt(2)
neighbours are completed to every seed (its walked batches are kept) and the search moves to a
neighbour while one measures better. The choice thus comes from full trials around the optimum,
as when the walk tried every scale on every seed, at about half the images.

Where the chosen scale still misses the target by more than sampling noise explains, the aim is
corrected next (`corrected_aim`): guidance aims at a distribution moved by the shrunk miss, kept
only when it lands nearer on the same seeds. Aims are judged on AIM_SAMPLES times the walk's
seeds: a miss estimated on the walk's seeds alone was too noisy to correct by (measured in
docs/methods.md). Judging images rather than the probe
matters: at the last step the probe sees the h that guidance itself has just edited, so it
always reports success.

Records are cached per (model revision, method, setting, steps, batch size) in OUT/calibration/
and may be shipped by a model's source (`ship_calibrations`). A trial is deterministic and records keep
each trial's per-seed labels, so when only the search changes, an earlier record's trials (and
their first batches) are reused rather than regenerated. Progress goes to the run's log once per
batch: trials done, an estimate of those left and an ETA at this calibration's own pace.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path

import numpy as np

from audit.files import atomic_write_json, inside
from audit.registry import effective_params
from audit.spec import DEFAULT_PROMPT
from audit.stages import reached

CALIBRATION_SEED = 20_000_000
# Scales a trial may use, factors of sqrt(2) from 1/4 to 64 (rounded as the earlier grid was, so its
# records' trials replay); the coarse pass uses every other one (factors of 2).
GRID = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.3, 16.0, 22.6, 32.0, 45.3, 64.0)
PATIENCE = 2  # coarse steps (factors of 2) without progress that end the coarse walk
COARSE_SEEDS = 64  # a coarse trial's seeds (rounded up to whole batches): FD noise ~0.09 on 2 classes
AIM_STEPS = 2  # aim corrections tried at the chosen scale
AIM_SAMPLES = 4  # aims are judged on this many times the walk's seeds (sampling noise halved)
# Bump RULE when the search or the choice changes: records are keyed on it.
RULE = f"images, walk on {COARSE_SEEDS} seeds then full, interpolated, aim corrected on {AIM_SAMPLES}x seeds"
# Records of these earlier rules stay valid for their cells: the full walk they made chose what
# the coarse-to-fine search chooses within sampling noise (docs/methods.md), so the zoo's shipped
# records keep serving until they are shipped again under RULE (then drop the rule from here).
EARLIER_RULES = ("images, interpolated, grid to 64, aim corrected on 4x seeds",)


def calibration_samples(k: int) -> int:
    """Calibration seeds for a target over k (joint) classes: 64 per class, at least 128, so FD's
    sampling noise stays near 0.06 (with 128 seeds it was 0.077 for 4 classes, and the
    4-class hair colour calibration chose 4.64 where 4.0 measured FD 0.062 and 4.64 0.081)."""
    return max(128, 64 * k)


def coarse_samples(n: int, batch: int) -> int:
    """A coarse trial's seeds: COARSE_SEEDS rounded up to whole batches (so they are the first
    batches of the full trial), at most the n of a full trial."""
    return min(n, -(-COARSE_SEEDS // batch) * batch)


def most_images(n: int) -> int:
    """The images a calibration on n seeds generates at most: every grid scale on every seed (a
    coarse trial's batches count toward its full version) and the aim corrections. A bound for
    the plan; a typical search makes a third to a half of the walk's part."""
    return n * len(GRID) + AIM_SAMPLES * n * (1 + AIM_STEPS)


def search(trial, coarse: int, full: int, noise: float, slack: float | None = None) -> list[dict]:
    """The full trials to choose from, sorted by scale. `trial(scale, count)` measures a scale on
    the first `count` seeds ({"fd", "p_hat", ...}). Coarse (count `coarse`, FD sampling noise
    `noise`): the walk of every earlier rule in factors of 2, upward from 1 until it passes the
    optimum (FD above the best by 2 noise) or PATIENCE steps bring no progress (guidance without
    effect), below 1 when 1 is already the best. Full (count `full`): the best coarse scale and
    its grid neighbours, moving to the best full trial until it is the best of its neighbours (the
    smallest scale on ties). With `slack` (auto_tolerance), scales below are completed while they
    stay within `slack` of the best, so that the smallest scale within it is bracketed."""
    steps = GRID[::2]
    fd: dict[float, float] = {}
    for scale in steps[steps.index(1.0):]:
        fd[scale] = trial(scale, coarse)["fd"]
        walked = list(fd.values())
        if walked[-1] > min(walked) + 2 * noise:  # past the optimum: larger scales only overshoot further
            break
        if len(walked) > PATIENCE and min(walked[-PATIENCE:]) > min(walked[:-PATIENCE]) - noise / 2:
            break  # no progress: guidance barely moves this model's images
    if min(sorted(fd), key=fd.get) == 1.0:
        for scale in reversed(steps[:steps.index(1.0)]):  # already over-guided at 1
            fd[scale] = trial(scale, coarse)["fd"]
            if fd[scale] > min(fd.values()) + 2 * noise:
                break

    done: dict[float, dict] = {}

    def complete(scale: float) -> dict:
        if scale not in done:
            done[scale] = trial(scale, full)
        return done[scale]

    best = min(sorted(fd), key=fd.get)  # the smallest scale on ties
    while True:
        complete(best)
        k = GRID.index(best)
        for j in (k - 1, k + 1):
            if 0 <= j < len(GRID):
                complete(GRID[j])
        moved = min(sorted(done), key=lambda s: done[s]["fd"])  # the smallest scale on ties
        if moved == best:
            break
        best = moved
    if slack is not None:
        bound = done[best]["fd"] + slack
        low = min(done)
        while GRID.index(low) > 0 and done[low]["fd"] <= bound:
            low = GRID[GRID.index(low) - 1]
            complete(low)
    return [done[s] for s in sorted(done)]


def calibrate(ctx, cell, factory, supplied: dict, params: dict, n: int | None = None) -> dict:
    """{"scale": ..., "aim": ...} for the cell: the aim is None where the target itself is aimed at
    (always, for a method without an `aim` param). `supplied`: the constructor arguments the
    runner made for the cell (audit.run.build.supplied_arguments), the target among them."""
    from audit.metrics.functional import joint_labels

    target = supplied["target"]
    n = n or calibration_samples(len(target))

    adapter = ctx.adapter(cell)
    config = calibration_config(ctx, cell, factory, supplied, params, n)
    record = record_name(config)
    cache = inside(ctx.store.out, Path("calibration") / f"{cell.model.name}-{record}")
    shipped = shipped_calibration(cell.model.source, record)
    if not cache.exists():
        for name in record_names(config):  # this rule's record first, then a valid earlier rule's
            places = (shipped_calibration(cell.model.source, name), cache.parent / f"{cell.model.name}-{name}")
            found = [p for p in places if p is not None and p != cache and p.exists()]
            if found:
                where = "a shipped" if found[0].parent != cache.parent else "an earlier rule's"
                ctx.log(f"{cell.method.name} on {cell.model.name}/{cell.setting.key}: using {where} calibrated scale")
                atomic_write_json(cache, json.loads(found[0].read_text()))
                break
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
    coarse = coarse_samples(n, cell.batch_size)
    sizes = [len(judge.attributes[a]) for a in cell.setting.attributes]
    earlier = earlier_trials(config, [cache.parent, shipped.parent] if shipped is not None else [cache.parent])
    resumed = resumable_measurements(partial, config)  # of a calibration killed before its record
    measured: dict[str, dict] = {}  # this calibration's measurements, by (scale, aim, seeds of the trial)
    whole: dict[str, dict] = {}  # earlier records' trials without per-seed labels
    views: list[dict] = []  # every answer the search got, in order
    progress = Progress()

    def say(message: str) -> None:
        ctx.log(f"calibrating {cell.method.name} on {cell.model.name}/{cell.setting.key}: {message}")

    def measure(scale: float, aim: np.ndarray | None = None, total: int = n, count: int | None = None) -> dict:
        """The trial of `scale` (and `aim`) over `total` seeds, measured on its first `count`."""
        count = count or total
        aimed = {} if aim is None else {"aim": aim.tolist()}
        key = measurement_key(scale, aimed.get("aim"), total)
        what = f"scale {scale:g}{' aimed' if aimed else ''} on {count} of {total} seeds"
        for source, store in (("kept from an interrupted calibration", resumed),
                              ("an earlier record's trial", earlier)):
            if key in store and "labels" not in store[key]:  # an earlier record's trial: stands only for itself
                whole[key] = store.pop(key)
            if key not in measured and key in store:
                measured[key] = store.pop(key)
                say(f"{what}: {source}")
        if count == total and key in whole:
            say(f"{what}: an earlier record's trial")
            return answer(whole[key])
        known = measured.get(key)
        if known is not None and (known["n"] == count or (known["n"] > count and "labels" in known)):
            return answer(prefix(known, count, target))
        labels = list(known["labels"]) if known is not None and "labels" in known and known["n"] < count else []
        method = factory(**{**supplied, **params, "scale": scale, **aimed})
        method.start_cell(seeds[:total])  # a first batch is the same whatever count the trial stops at
        for i in range(len(labels), count, cell.batch_size):
            started = time.perf_counter()
            end = min(i + cell.batch_size, count)
            out = adapter.generate(seeds[i:end], prompts=None if prompts is None else prompts[i:end],
                                   steps=cell.model.steps, guidance_scale=cell.model.guidance_scale, method=method,
                                   eta=cell.model.eta)
            found = judge.label(out.images)
            flat = out.images.flatten(1)  # a non-finite (stored black) or flat image is no sample of any class
            valid = found.valid & out.finite.numpy() & (flat.amax(1) > flat.amin(1)).numpy()
            joint, _ = joint_labels([found.hard(a) for a in cell.setting.attributes], sizes)
            labels += np.where(valid, joint, -1).tolist()
            measured[key] = summary(scale, aimed, total, labels, target)
            atomic_write_json(partial, {"config": config, "measurements": list(measured.values())})
            progress.batch(end - i, time.perf_counter() - started)
            say(f"{what}: {end} generated; {progress.line(*outlook(total, count, end))}")
            reached("calibration-trial")
        return answer(measured[key])

    def outlook(total: int, count: int, done: int) -> tuple[int, int, int]:
        """(trials done, an estimate of the trials left and of their images) for a typical
        search: three coarse trials, then one completed and two full ones; once the aim checks
        have started, up to 1 + AIM_STEPS of them. The trial in hand is left until its last batch."""
        if total > n:
            later = [total] * (AIM_STEPS - sum(1 for v in views if max(v["n"], v.get("of", 0)) > n))
        elif not any(m["n"] == n == m.get("of", n) for m in measured.values()):
            later = [coarse] * max(0, 2 - len(views)) + [n - coarse, n, n]
        else:
            later = [n] * max(0, 3 - sum(1 for v in views if v["n"] == n))
        rest = count - done
        return len(views), bool(rest) + len(later), rest + sum(later)

    def answer(result: dict) -> dict:
        views.append(result)
        say(f"scale {result['scale']:g}{' aimed' if 'aim' in result else ''} on {result['n']} seeds "
            f"-> FD {result['fd']:.3f}")
        return result

    tolerance = float(params.get("auto_tolerance") or 0.0)
    coarse_noise = float(np.sqrt((target * (1 - target)).sum() / coarse))
    tried = search(lambda scale, count: measure(scale, count=count), coarse, n, coarse_noise,
                   tolerance * noise if tolerance else None)
    chosen = smallest_scale_within(tried, target, tolerance * noise) if tolerance else interpolated_scale(tried, target)
    aim, aimed = None, []
    if takes_aim(factory) and params.get("aim") is None and min(t["fd"] for t in tried) > noise:
        count = AIM_SAMPLES * n
        aim_noise = noise / np.sqrt(AIM_SAMPLES)
        best = measure(chosen, total=count)
        say(f"chosen scale {chosen:g} -> FD {best['fd']:.3f} on {count} seeds (sampling noise {aim_noise:.3f})")
        aimed.append(best)
        for _ in range(AIM_STEPS):
            candidate = corrected_aim(np.asarray(best.get("aim", target)), np.asarray(best["p_hat"]), target,
                                      aim_noise)
            if candidate is None:
                break
            aimed.append(measure(chosen, candidate, total=count))
            say(f"scale {chosen:g} aimed at {np.round(candidate, 3).tolist()} -> FD {aimed[-1]['fd']:.3f} "
                f"(was {best['fd']:.3f})")
            if aimed[-1]["fd"] >= best["fd"]:
                break
            best = aimed[-1]
        aim = best.get("aim")
    coarse_only = [m for m in measured.values() if m["n"] < m.get("of", m["n"])]
    atomic_write_json(cache, {"scale": chosen, "aim": aim, "noise": noise, "tried": tried, "coarse": coarse_only,
                              "aimed": aimed, "images": progress.images, "config": config})
    partial.unlink(missing_ok=True)
    say(f"chose scale {chosen:g}{' with a corrected aim' if aim is not None else ''} after {progress.summary()}")
    return {"scale": chosen, "aim": aim}


def summary(scale: float, aimed: dict, total: int, labels: list[int], target: np.ndarray) -> dict:
    """A measurement: the class shares among the valid labels (-1: no sample of any class)."""
    joint = np.asarray([v for v in labels if v >= 0], dtype=int)
    p_hat = np.bincount(joint, minlength=len(target)) / max(1, len(joint))
    result = {"scale": scale, **aimed, "n": len(labels), "fd": float(np.linalg.norm(p_hat - target)),
              "p_hat": p_hat.round(4).tolist(), "labels": labels}
    return result if len(labels) == total else {**result, "of": total}


def prefix(measurement: dict, count: int, target: np.ndarray) -> dict:
    """The measurement on its first `count` seeds (itself when it has no more)."""
    if measurement["n"] == count:
        return measurement
    aimed = {"aim": measurement["aim"]} if "aim" in measurement else {}
    return summary(measurement["scale"], aimed, measurement.get("of", measurement["n"]),
                   measurement["labels"][:count], target)


class Progress:
    """What this calibration generated and how fast, for the log's trial counts and ETA."""

    def __init__(self):
        self.images, self.seconds = 0, 0.0

    def batch(self, images: int, seconds: float) -> None:
        self.images += images
        self.seconds += seconds

    def line(self, trials_done: int, trials_left: int, images_left: int) -> str:
        eta = images_left * self.seconds / max(1, self.images)
        return f"{trials_done} trials done, about {trials_left} left, ETA {clock(eta)}"

    def summary(self) -> str:
        return f"{self.images} images in {clock(self.seconds)}"


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def measurement_key(scale: float, aim: list | None, count: int) -> str:
    return json.dumps([float(scale), aim, int(count)])


def resumable_measurements(partial: Path, config: dict) -> dict[str, dict]:
    """The measurements (walk trials, or their first batches, and aims) a calibration of the same
    config made before it was killed or interrupted, by (scale, aim, seeds of the trial): each is
    deterministic (fixed seeds, weights, params and judge), so the re-run continues from them and
    chooses what the run would have.
    Kept in OUT/calibration/partial/ (not beside the records: ship_calibrations and earlier_trials
    read those as finished) and removed once the record is written."""
    try:
        data = json.loads(partial.read_text())
    except (OSError, ValueError):
        return {}
    same = lambda c: json.dumps(c, sort_keys=True, default=str)  # noqa: E731  (NaN accuracies compare equal)
    if not isinstance(data, dict) or same(data.get("config")) != same(config):
        return {}
    return {measurement_key(m["scale"], m.get("aim"), m.get("of", m["n"])): m for m in data.get("measurements", [])}


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


def calibrated_model(model) -> dict:
    """The model entry as calibration records key it: everything but its name and the weight-format
    opt-in, with options added later left out while unset (so earlier records keep their keys)."""
    unset = {key for key in ("eta", "hspace", "hspace_pool") if not getattr(model, key)}
    return model.model_dump(exclude={"name", "allow_pickle"} | unset)


def takes_aim(factory) -> bool:
    """Whether the method can be aimed at class shares other than the target (an `aim` param)."""
    parameters = inspect.signature(factory).parameters.values()
    return any(p.name == "aim" or p.kind is p.VAR_KEYWORD for p in parameters)


def calibration_config(ctx, cell, factory, supplied: dict, params: dict, n: int) -> dict:
    """Everything a calibrated scale depends on: `unloaded_config`, the model's weights by
    revision (not its name) and the probes' accuracies, for the methods given probes."""
    return {**unloaded_config(ctx.suite, cell, factory, params, n), "revision": ctx.adapter(cell).revision,
            "probes": [p.meta.get("val_accuracy", [])[:3] for p in supplied.get("probes", [])]}


def unloaded_config(suite, cell, factory, params: dict, n: int) -> dict:
    """What a calibrated scale depends on that the suite tells without loading anything (the dry
    run compares it with cached and shipped records): the model entry, the method's params with
    its defaults filled in, the setting, batch, prompt, judge, seeds, the rule and, for a method
    that edits with the classes' phrases, those phrases."""
    params = effective_params(factory, params)
    if params.get("aim") is None:
        params.pop("aim", None)  # aimed at the target itself, as every record before aims existed
    # eta 0 = unset; allow_pickle only says which weight files may load (the revision names the weights)
    return {"model": calibrated_model(cell.model), "method": cell.method.name, "params": params,
            "attributes": cell.setting.attributes, "target": [float(v) for v in cell.setting.target_vector()],
            "batch": cell.batch_size, "prompt": cell.prompt, "judge": suite.probe_labeler, "n": n, "rule": RULE,
            **({"phrases": suite.class_phrases(cell.setting)} if "phrases" in getattr(factory, "supplied", ()) else {})}


def earlier_trials(config: dict, folders: list[Path]) -> dict[str, dict]:
    """Measurements of records that differ from `config` only in how the scale is chosen (the
    calibration rule, `auto_tolerance`), by (scale, aim, seeds of the trial), the most seeds
    first: the same seeds, weights, method params and judge give the same images and FD. A
    record's walk trials without per-seed labels (made before records kept them) stand only for
    themselves, not for their first batches."""
    def walk(c: dict) -> dict:
        params = {k: v for k, v in (c.get("params") or {}).items() if k != "auto_tolerance"}
        return json.loads(json.dumps({**{k: v for k, v in c.items() if k != "rule"}, "params": params}, default=str))

    same = walk(config)
    found: dict[str, dict] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*.json")):
            data = json.loads(path.read_text())
            other = data.get("config", {})
            if other == config or walk(other) != same:
                continue
            for m in [*data.get("tried", []), *data.get("coarse", []), *data.get("aimed", [])]:
                m = {"n": other.get("n"), **m}  # the oldest records' walk trials leave n to the config
                key = measurement_key(m["scale"], m.get("aim"), m.get("of", m["n"]))
                if key not in found or m["n"] > found[key]["n"]:
                    found[key] = m
    return found


def record_names(config: dict) -> list[str]:
    """The names a record of `config` may have: under RULE, then under each of EARLIER_RULES."""
    return [record_name(config)] + [record_name({**config, "rule": rule}) for rule in EARLIER_RULES]


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
    """Whether a record can still be used: made on these weights, by the current rule or one of
    the earlier rules that stay valid."""
    return config.get("revision") == revision and config.get("rule") in (RULE, *EARLIER_RULES)


def ship_calibrations(run_dir: Path, revisions: dict[str, str]) -> list[Path]:
    """Copy a run's calibration records of models whose source ships calibrations (the zoo's) to
    where it ships them, so suites on those models (the quickstart) start calibrated; records of
    other revisions of those models, or of an earlier calibration rule, are removed (they can never
    be used again). `revisions` maps model sources (`PREFIX:NAME`) to their current revision;
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
