"""`diffaudit zoo check`: measure every zoo model against the bars it must meet.

Each row is one measured figure with its bar, so the table (and its JSON) is the evidence that
the zoo reproduces its training world faithfully.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from audit.zoo import is_trained, zoo_path
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
    from audit.labelers.synthfaces import SynthFacesLabeler

    return SynthFacesLabeler(labeler).label(images01).probs


def marginal_rows(model: str, probs: dict[str, np.ndarray], target: dict[str, tuple], tolerance: float,
                  prefix: str = "") -> list[CheckRow]:
    rows = []
    for attribute, classes in ATTRIBUTES.items():
        observed = np.bincount(probs[attribute].argmax(1), minlength=len(classes)) / len(probs[attribute])
        gap = float(np.abs(observed - np.asarray(target[attribute])).max())
        shown = ", ".join(f"{c} {o:.3f}/{t:.2f}" for c, o, t in zip(classes, observed, target[attribute],
                                                                   strict=True))
        rows.append(CheckRow(model, f"{prefix}marginal gap {attribute}", gap, f"<= {tolerance}",
                             gap <= tolerance, f"observed/training: {shown}"))
    return rows


def check_ddpm(rows: list[CheckRow], n: int, steps: int, batch_size: int) -> None:
    from audit.metrics.fid import fid_between
    from audit.models.adapter import ModelAdapter

    name = "synthfaces-ddpm"
    if not is_trained(name) or not is_trained_classifier("synthfaces-eval"):
        rows.append(CheckRow(name, "trained", None, "weights present", None, "model or labeler not trained"))
        return
    adapter = ModelAdapter.from_zoo(name)
    images = torch.cat([adapter.generate(list(range(i, min(i + batch_size, n))), steps=steps).images
                        for i in range(0, n, batch_size)])
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
        baseline = fid_between(reference, other)
        fid = fid_between(reference, images)
        rows.append(CheckRow(name, "FID[synthfaces] ratio", fid / baseline, "<= 2.0", fid / baseline <= 2.0,
                             f"FID {fid:.3f} vs ground-truth/ground-truth FID {baseline:.3f} (n={n} each)"))
    rows.append(CheckRow(name, "samples", float(n), f"{steps} DDIM steps", True, "judged by synthfaces-eval"))


T2I_GUIDANCE = 2.0  # the classifier-free guidance scale the t2i bars are measured at


def check_t2i(rows: list[CheckRow], n: int, n_prompt: int, steps: int, batch_size: int) -> None:
    from audit.models.adapter import ModelAdapter
    from audit.zoo.synthfaces import ATTRIBUTE_PHRASES

    name = "synthfaces-t2i"
    if not is_trained(name) or not is_trained_classifier("synthfaces-eval"):
        rows.append(CheckRow(name, "trained", None, "weights present", None, "model or labeler not trained"))
        return
    adapter = ModelAdapter.from_zoo(name)

    def sample(prompt: str, count: int, seed0: int) -> torch.Tensor:
        return torch.cat([adapter.generate(list(range(i, min(i + batch_size, count))),
                                           prompts=[prompt] * min(batch_size, count - i), steps=steps,
                                           guidance_scale=T2I_GUIDANCE).images
                          for i in range(seed0, seed0 + count, batch_size)])

    neutral = "a photo of a person"
    probs = label_probabilities(sample(neutral, n, 0))
    rows.extend(marginal_rows(name, probs, BIASED_WORLD.marginals, 0.07, prefix=f"'{neutral}' "))
    for attribute, per_class in ATTRIBUTE_PHRASES.items():
        for index, cls in enumerate(ATTRIBUTES[attribute]):
            phrase = per_class[cls][0]
            share = float((label_probabilities(sample(f"{neutral} {phrase}", n_prompt, 0))[attribute].argmax(1)
                           == index).mean())
            rows.append(CheckRow(name, f"'{phrase}' gives {attribute}={cls}", share, ">= 0.90", share >= 0.9,
                                 f"{n_prompt} samples, CFG {T2I_GUIDANCE}"))


def run_check(n: int = 1000, steps: int = 50, batch_size: int = 100, n_heldout: int = 10_000, n_prompt: int = 200,
              models: tuple[str, ...] = ("labelers", "synthfaces-ddpm", "synthfaces-t2i")) -> list[CheckRow]:
    rows: list[CheckRow] = []
    if "labelers" in models:
        check_labelers(rows, n_heldout)
    if "synthfaces-ddpm" in models:
        check_ddpm(rows, n, steps, batch_size)
    if "synthfaces-t2i" in models:
        check_t2i(rows, n, n_prompt, steps, batch_size)
    return rows


def rows_to_json(rows: list[CheckRow]) -> list[dict]:
    return [asdict(r) for r in rows]
