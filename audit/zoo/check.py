"""`diffaudit zoo check`: measure every zoo model against the bars it must meet.

Each row is one measured figure with its bar, so the table (and its JSON) is the evidence that
the zoo reproduces its training world faithfully.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from audit.zoo import is_trained, load_adapter, zoo_path
from audit.zoo.recipes import RECIPES
from audit.zoo.synthfaces import ATTRIBUTES, BIASED_WORLD, generate

GT_FID_SEEDS = (424_242, 434_343, 444_444)  # held-out ground-truth sets for FID


@dataclass
class CheckRow:
    model: str
    check: str
    value: float | None
    bar: str
    passed: bool | None  # None: not measured (model missing)
    detail: str = ""

    def value_text(self) -> str:
        return "-" if self.value is None else f"{self.value:.4f}"


class CheckRows(list):
    """The check's rows, each also handed to `on_row` as soon as it is measured: a full check takes
    hours on 2 cores, so its figures should show as they come, and a check stopped early should
    still leave the ones it measured."""

    def __init__(self, on_row=None):
        super().__init__()
        self.on_row = on_row

    def append(self, row: CheckRow) -> None:
        super().append(row)
        if self.on_row is not None:
            self.on_row(row)

    def extend(self, rows) -> None:
        for row in rows:
            self.append(row)


def _labeler(name: str):
    from audit.zoo.networks import SynthFacesCNN

    return SynthFacesCNN.load(zoo_path(name))


def check_labelers(rows: list[CheckRow], n_heldout: int) -> None:
    from audit.zoo.train_classifier import measure

    for name in ("synthfaces-eval", "synthfaces-pseudo"):
        if not is_trained_classifier(name):
            rows.append(CheckRow(name, "trained", None, "weights present", None, "not trained"))
            continue
        result = measure(_labeler(name), n=n_heldout)
        for attribute, entry in result["attributes"].items():
            acc = entry["accuracy"]
            rows.append(CheckRow(name, f"accuracy {attribute}", acc, ">= 0.97", acc >= 0.97,
                                 f"{n_heldout} held-out ground-truth images"))


def is_trained_classifier(name: str) -> bool:
    return (zoo_path(name) / "model.safetensors").exists()


def label_probabilities(images01: torch.Tensor, labeler: str = "synthfaces-eval") -> dict[str, np.ndarray]:
    from audit.zoo.labelers import SynthFacesLabeler

    return SynthFacesLabeler(labeler).label(images01).probs


def observed_marginals(probs: dict[str, np.ndarray], target: dict[str, tuple]) -> dict[str, tuple[np.ndarray, float]]:
    """Each attribute's shares of labels (argmax) and their largest gap to the target marginal."""
    result = {}
    for attribute, classes in ATTRIBUTES.items():
        observed = np.bincount(probs[attribute].argmax(1), minlength=len(classes)) / len(probs[attribute])
        result[attribute] = observed, float(np.abs(observed - np.asarray(target[attribute])).max())
    return result


def marginal_rows(model: str, probs: dict[str, np.ndarray], target: dict[str, tuple], tolerance: float,
                  prefix: str = "", detail: str = "") -> list[CheckRow]:
    rows = []
    for attribute, (observed, gap) in observed_marginals(probs, target).items():
        classes = ATTRIBUTES[attribute]
        shown = ", ".join(f"{c} {o:.3f}/{t:.2f}" for c, o, t in zip(classes, observed, target[attribute],
                                                                   strict=True))
        rows.append(CheckRow(model, f"{prefix}marginal gap {attribute}", gap, f"<= {tolerance}",
                             gap <= tolerance, f"observed/training: {shown}" + (f"; {detail}" if detail else "")))
    return rows


def diffusion_model(name: str, candidate: Path | None):
    """The zoo model's committed weights, or a candidate export of it (e.g. `zoo train --export-dir`)."""
    from audit.models.adapter import ModelAdapter

    if candidate is None:
        return load_adapter(name)
    return ModelAdapter.from_directory(candidate, model_id=f"{name} candidate {candidate}")


def _present(name: str, candidate: Path | None) -> bool:
    trained = (candidate / "training.json").exists() if candidate is not None else is_trained(name)
    return trained and is_trained_classifier("synthfaces-eval")


def generate_in_batches(adapter, seeds: list[int], batch_size: int, prompts: list[str] | None = None,
                        **kwargs) -> torch.Tensor:
    """adapter.generate over `seeds` (and their prompts) in batches of `batch_size`: images [N, 3, H, W]."""
    return torch.cat([adapter.generate(seeds[i:i + batch_size],
                                       prompts=None if prompts is None else prompts[i:i + batch_size],
                                       **kwargs).images
                      for i in range(0, len(seeds), batch_size)])


def check_ddpm(rows: list[CheckRow], n: int, steps: int, batch_size: int, candidate: Path | None = None,
               first_seed: int = 0, eta: float | None = None) -> None:
    from audit.metrics.fid import fid_between

    name = "synthfaces-ddpm"
    if not _present(name, candidate):
        rows.append(CheckRow(name, "trained", None, "weights present", None, "model or labeler not trained"))
        return
    adapter = diffusion_model(name, candidate)
    images = generate_in_batches(adapter, list(range(first_seed, first_seed + n)), batch_size, steps=steps, eta=eta)
    probs = label_probabilities(images)
    rows.extend(marginal_rows(name, probs, BIASED_WORLD.marginals, 0.05))
    for attribute in ATTRIBUTES:
        confident = float((probs[attribute].max(1) >= 0.9).mean())
        rows.append(CheckRow(name, f"confident {attribute}", confident, ">= 0.90", confident >= 0.9,
                             "share of samples with max probability >= 0.9"))
    all_confident = float(np.stack([probs[a].max(1) >= 0.9 for a in ATTRIBUTES]).all(0).mean())
    rows.append(CheckRow(name, "confident on every attribute", all_confident, ">= 0.90",
                         all_confident >= 0.9, "share of samples confident on all five at once"))
    if is_trained_classifier("synthfaces-features"):
        reference = generate(n, BIASED_WORLD, seed=GT_FID_SEEDS[0]).tensor() / 2 + 0.5
        other = generate(n, BIASED_WORLD, seed=GT_FID_SEEDS[1]).tensor() / 2 + 0.5
        baseline = fid_between(reference, other, "synthfaces")
        fid = fid_between(reference, images, "synthfaces")
        rows.append(CheckRow(name, "FID[synthfaces] ratio", fid / baseline, "<= 2.0", fid / baseline <= 2.0,
                             f"FID {fid:.3f} vs ground-truth/ground-truth FID {baseline:.3f} (n={n} each)"))
    rows.append(CheckRow(name, "samples", float(n), f"{steps} DDIM steps, eta {eta or 0:g}", True,
                         f"seeds {first_seed}-{first_seed + n - 1}, judged by synthfaces-eval"))


T2I_GUIDANCE = 2.0  # the classifier-free guidance scale the benchmarks sample synthfaces-t2i at
# The t2i bars ask whether training fitted p(image | caption), so by default they sample that distribution
# itself: classifier-free guidance > 1 samples a sharpened p(x|c) p(c|x)^(w-1), which overshoots rare
# classes' colours (at CFG 2-3 the step-8,000 export draws 'with blond hair' as gray hair ever more often).
T2I_CHECK_GUIDANCE = 1.0


def check_t2i(rows: list[CheckRow], n: int, n_prompt: int, steps: int, batch_size: int,
              candidate: Path | None = None, guidance_scale: float = T2I_CHECK_GUIDANCE,
              first_seed: int = 0) -> None:
    from audit.zoo.synthfaces import ATTRIBUTE_PHRASES

    name = "synthfaces-t2i"
    if not _present(name, candidate):
        rows.append(CheckRow(name, "trained", None, "weights present", None, "model or labeler not trained"))
        return
    adapter = diffusion_model(name, candidate)

    def sample(prompt: str, count: int) -> torch.Tensor:
        return generate_in_batches(adapter, list(range(first_seed, first_seed + count)), batch_size,
                                   [prompt] * count, steps=steps, guidance_scale=guidance_scale)

    neutral = "a photo of a person"
    probs = label_probabilities(sample(neutral, n))
    rows.extend(marginal_rows(name, probs, BIASED_WORLD.marginals, 0.07, prefix=f"'{neutral}' ",
                              detail=f"{n} samples from seed {first_seed}, CFG {guidance_scale}"))
    for attribute, per_class in ATTRIBUTE_PHRASES.items():
        for index, cls in enumerate(ATTRIBUTES[attribute]):
            phrase = per_class[cls][0]
            share = float((label_probabilities(sample(f"{neutral} {phrase}", n_prompt))[attribute].argmax(1)
                           == index).mean())
            rows.append(CheckRow(name, f"'{phrase}' gives {attribute}={cls}", share, ">= 0.90", share >= 0.9,
                                 f"{n_prompt} samples from seed {first_seed}, CFG {guidance_scale}"))


CLIP_BARS = {"hair_color": 0.80}  # zero-shot accuracy bars; binary attributes: 0.90


def check_clip(rows: list[CheckRow], n_heldout: int, n_pairs: int, steps: int, batch_size: int) -> None:
    """Zero-shot accuracy and retrieval of synthfaces-clip on held-out ground truth, and whether its
    CLIP score tells synthfaces-t2i samples' own prompts from shuffled ones."""
    from audit.zoo.train_clip import measure

    name = "synthfaces-clip"
    if not (zoo_path(name) / "config.json").exists():
        rows.append(CheckRow(name, "trained", None, "weights present", None, "not trained"))
        return
    result = measure(zoo_path(name), n=n_heldout)
    for attribute, entry in result["attributes"].items():
        acc, bar = entry["accuracy"], CLIP_BARS.get(attribute, 0.90)
        rows.append(CheckRow(name, f"zero-shot accuracy {attribute}", acc, f">= {bar:.2f}", acc >= bar,
                             f"{n_heldout} held-out ground-truth images"))
    for key, value in result["retrieval"].items():
        rows.append(CheckRow(name, f"retrieval {key.replace('_', ' ')}", value, ">= 0.50", value >= 0.5,
                             f"{n_heldout} held-out ground-truth images (chance 1/{key.rsplit('_', 1)[1]})"))
    if not is_trained("synthfaces-t2i"):
        rows.append(CheckRow(name, "CLIP score margin on synthfaces-t2i", None, "95% interval > 0", None,
                             "synthfaces-t2i not trained"))
        return
    t2i = clip_t2i_measurements(n_pairs, steps, batch_size)
    m = t2i["margins"]["shuffled"]
    rows.append(CheckRow(name, "t2i CLIP score: matching - shuffled prompt", m["mean"], "95% interval > 0", m["lo"] > 0,
                         f"[{m['lo']:.2f}, {m['hi']:.2f}], n={m['n']} synthfaces-t2i samples, matching CLIP score "
                         f"{m['matching']:.2f}, CFG {T2I_GUIDANCE}, {steps} steps"))
    for attribute in ATTRIBUTES:  # diagnostics: they also measure how well synthfaces-t2i follows each attribute
        m = t2i["margins"][attribute]
        rows.append(CheckRow(name, f"t2i CLIP score: matching - {attribute} changed", m["mean"], "(diagnostic)", None,
                             f"[{m['lo']:.2f}, {m['hi']:.2f}], n={m['n']}; synthfaces-eval sees the prompted "
                             f"{attribute} in {t2i['followed'][attribute]:.1%} of these samples"))
    for attribute, agreement in t2i["agreement"].items():
        rows.append(CheckRow(name, f"t2i zero-shot agreement with synthfaces-eval {attribute}", agreement,
                             "(diagnostic)", None, f"share of the {n_pairs} samples both label alike"))


def clip_t2i_measurements(n: int = 200, steps: int = 50, batch_size: int = 100, seed: int = 77) -> dict:
    """Sample synthfaces-t2i with prompts naming three random attributes of a uniform-world face
    and compare each image's CLIP score (zoo CLIP) for its own prompt with (a) another image's
    prompt (a derangement) and (b) its prompt with one attribute's class changed: paired
    differences, mean with a normal 95% interval. Also: how often synthfaces-eval sees the
    prompted class, and how often the zoo CLIP's zero-shot labels agree with synthfaces-eval."""
    from audit.metrics.clip import clip_scores
    from audit.zoo.labelers import SynthFacesClipLabeler
    from audit.zoo.source import CLIP
    from audit.zoo.synthfaces import UNIFORM_WORLD, caption_for

    rng = np.random.default_rng(seed)
    truth = UNIFORM_WORLD.sample_attributes(rng, n)
    names = list(ATTRIBUTES)
    mentioned = [set(rng.choice(names, 3, replace=False).tolist()) for _ in range(n)]

    def prompt(i: int, change: str | None = None) -> str:
        attrs = {a: int(truth[a][i]) for a in names if a in mentioned[i]}
        if change is not None:
            k = len(ATTRIBUTES[change])
            attrs[change] = (attrs[change] + 1 + int(rng.integers(k - 1))) % k
        return caption_for(attrs, np.random.default_rng(seed * 1_000 + i), 1.0)

    prompts = [prompt(i) for i in range(n)]
    adapter = load_adapter("synthfaces-t2i")
    images = generate_in_batches(adapter, list(range(n)), batch_size, prompts, steps=steps,
                                 guidance_scale=T2I_GUIDANCE)
    path = str(zoo_path(CLIP))
    matching = clip_scores(images, prompts, path)
    order = rng.permutation(n)
    other = np.empty(n, dtype=int)
    other[order] = np.roll(order, -1)  # every image gets another image's prompt
    contrasts = {"shuffled": (np.arange(n), clip_scores(images, [prompts[j] for j in other], path))}
    evaluated = label_probabilities(images)
    zero_shot = SynthFacesClipLabeler().label(images).probs
    followed, agreement = {}, {}
    for attribute in names:
        idx = np.array([i for i in range(n) if attribute in mentioned[i]])
        contrasts[attribute] = (idx, clip_scores(images[idx], [prompt(i, attribute) for i in idx], path))
        seen = evaluated[attribute].argmax(1)
        followed[attribute] = float((seen[idx] == truth[attribute][idx]).mean())
        agreement[attribute] = float((zero_shot[attribute].argmax(1) == seen).mean())
    margins = {}
    for key, (idx, scores) in contrasts.items():
        diff = matching[idx] - scores
        half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
        margins[key] = {"mean": float(diff.mean()), "lo": float(diff.mean() - half),
                        "hi": float(diff.mean() + half), "n": len(diff), "matching": float(matching[idx].mean())}
    return {"margins": margins, "followed": followed, "agreement": agreement}


def run_check(n: int = 1000, steps: int = 50, batch_size: int = 100, n_heldout: int = 10_000, n_prompt: int = 200,
              models: tuple[str, ...] = ("labelers", "synthfaces-ddpm", "synthfaces-t2i", "clip"),
              candidates: dict[str, Path] | None = None, on_row=None,
              t2i_guidance_scale: float = T2I_CHECK_GUIDANCE, first_seed: int = 0,
              ddpm_eta: float | None = None) -> list[CheckRow]:
    """candidates: {diffusion model name: export directory} checked in place of the committed weights;
    on_row: called with each row as soon as it is measured; first_seed: the diffusion models'
    samples use seeds first_seed.. (the bars are measured from 0; another start shows how much a
    figure owes to its particular seeds); ddpm_eta: DDIM's eta for synthfaces-ddpm (unset: the zoo's
    sampling_eta, the sampler suites use)."""
    rows = CheckRows(on_row)
    candidates = candidates or {}
    if "labelers" in models:
        check_labelers(rows, n_heldout)
    if "synthfaces-ddpm" in models:
        if ddpm_eta is None:
            ddpm_eta = RECIPES["synthfaces-ddpm"].sampling_eta
        check_ddpm(rows, n, steps, batch_size, candidates.get("synthfaces-ddpm"), first_seed, ddpm_eta)
    if "synthfaces-t2i" in models:
        check_t2i(rows, n, n_prompt, steps, batch_size, candidates.get("synthfaces-t2i"), t2i_guidance_scale,
                  first_seed)
    if "clip" in models:
        check_clip(rows, n_heldout, n_prompt, steps, batch_size)
    return rows


def rows_to_json(rows: list[CheckRow]) -> list[dict]:
    return [asdict(r) for r in rows]
