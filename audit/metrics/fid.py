"""FID with torchmetrics' FrechetInceptionDistance and a named, pluggable feature extractor.

The extractor is part of the metric's name (FID[synthfaces], ...): FIDs computed with
different extractors are different metrics and are never compared.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from audit.zoo.synthfaces import ATTRIBUTES


class SynthFacesFeatures(nn.Module):
    """FID[synthfaces]: the 64-d embedding of the zoo's `synthfaces-features` CNN, a network
    trained on SynthFaces to classify every attribute and regress every nuisance render
    parameter, so its features respond to everything the world varies. Input: images in
    [0, 1] (torchmetrics' normalize=True convention)."""

    def __init__(self, model: nn.Module | None = None):
        super().__init__()
        if model is None:
            from audit.zoo import zoo_path
            from audit.zoo.networks import SynthFacesCNN

            model = SynthFacesCNN.load(zoo_path("synthfaces-features"))
        self.model = model.eval()
        self.num_features = model.config["feature_dim"]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        if images.shape[-1] != 32:
            images = nn.functional.interpolate(images, size=(32, 32), mode="area")
        return self.model.features(images * 2 - 1).double()


def _mobilenet_features():
    from audit.metrics.mobilenet import MobileNetFeatures

    return MobileNetFeatures()


def _inception_features(weights: str | None = None):
    from audit.metrics.inception import InceptionFeatures

    return InceptionFeatures(weights)


EXTRACTORS = {"synthfaces": SynthFacesFeatures, "mobilenet_v2": _mobilenet_features,
              "inception": _inception_features}
WEIGHTED = {"inception"}  # extractors whose weights the user supplies (fid.weights)


def make_fid(extractor: str = "synthfaces", weights: str | None = None):
    """A torchmetrics FrechetInceptionDistance over the named extractor (inputs in [0, 1])."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown FID extractor {extractor!r}; available: {', '.join(EXTRACTORS)}")
    if extractor in WEIGHTED:
        feature = EXTRACTORS[extractor](weights)
    elif weights:
        raise ValueError(f"fid.weights applies to the {', '.join(sorted(WEIGHTED))} extractor, not {extractor!r}")
    else:
        feature = EXTRACTORS[extractor]()
    return FrechetInceptionDistance(feature=feature, normalize=True)


def extractor_tag(extractor: str, weights: str | None = None) -> str:
    """The extractor's name in cache files: user-supplied weights are part of how stats were made."""
    if extractor in WEIGHTED and weights:
        path = Path(weights)
        size = path.stat().st_size if path.is_file() else 0
        return f"{extractor}-{path.stem}-{size}"
    return extractor


def fid_between(a: torch.Tensor, b: torch.Tensor, extractor: str = "synthfaces", batch: int = 500,
                weights: str | None = None) -> float:
    """FID between two image sets ([N, 3, H, W] in [0, 1]); `a` is the reference."""
    metric = make_fid(extractor, weights)
    for i in range(0, len(a), batch):
        metric.update(a[i:i + batch], real=True)
    for i in range(0, len(b), batch):
        metric.update(b[i:i + batch], real=False)
    return float(metric.compute())


REFERENCE_SEED = 31_337  # ground-truth reference sets never share seeds with training data


def reference_images(reference: str, n: int, base_dir: Path | None = None) -> torch.Tensor:
    """[n, 3, H, W] in [0, 1] from 'synthfaces:WORLD' or a directory of image files."""
    if reference.startswith("synthfaces:"):
        from audit.zoo.synthfaces import WORLDS, generate

        world = reference.split(":", 1)[1]
        if world not in WORLDS:
            raise ValueError(f"unknown SynthFaces world {world!r}; allowed: {', '.join(WORLDS)}")
        return generate(n, WORLDS[world], seed=REFERENCE_SEED).tensor() / 2 + 0.5
    import numpy as np
    from PIL import Image

    folder = Path(reference) if base_dir is None else base_dir / reference
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))[:n]
    if len(files) < 2:
        raise FileNotFoundError(f"FID reference {folder} holds {len(files)} images; need at least 2")
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BICUBIC)) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def target_world_images(reference: str, attributes: list[str], target: list[float], n: int) -> torch.Tensor:
    """Ground truth of the reference world with the guided attributes' joint distribution
    replaced by the target (counts rounded to n; correlations involving them dropped): the
    distribution a perfect debiasing method would produce, so FID against it measures what
    guidance costs in quality without charging it for the shift it was asked to make."""
    import numpy as np

    from audit.zoo.synthfaces import WORLDS, World, generate

    base = WORLDS[reference.split(":", 1)[1]]
    marginals = {**base.marginals, **{a: tuple([1 / len(ATTRIBUTES[a])] * len(ATTRIBUTES[a])) for a in attributes}}
    correlations = tuple(c for c in base.correlations if c.attribute not in attributes and c.given not in attributes)
    k = len(target)
    pool = generate(2 * n * k, World(marginals, correlations), seed=REFERENCE_SEED + 1)
    joint = np.zeros(len(pool), dtype=int)
    for a in attributes:
        joint = joint * len(ATTRIBUTES[a]) + np.asarray(pool.attributes[a])
    counts = np.floor(np.asarray(target) * n).astype(int)
    for c in np.argsort(-(np.asarray(target) * n - counts))[: n - counts.sum()]:  # largest remainders
        counts[c] += 1
    chosen = np.concatenate([np.flatnonzero(joint == c)[:counts[c]] for c in range(k)])
    return pool.tensor()[np.sort(chosen)] / 2 + 0.5


def reference_state(out: Path, extractor: str, reference: str, n: int, weights: str | None = None,
                    target: tuple[list[str], list[float]] | None = None) -> dict[str, torch.Tensor]:
    """The reference set's feature statistics, cached under a name that says how they were made;
    with `target` (attributes, joint target), the target-matched ground truth of a SynthFaces world."""
    from safetensors.torch import load_file, save_file

    from audit.store import inside

    safe = lambda text: "".join(c if c.isalnum() or c in "-_." else "_" for c in text)  # noqa: E731
    name = reference if target is None else f"{reference}-{'x'.join(target[0])}-{'_'.join(f'{v:g}' for v in target[1])}"
    cache = inside(out, Path("fid") / f"{safe(extractor_tag(extractor, weights))}__{safe(name)}__n{n}.safetensors")
    if cache.exists():
        return load_file(cache)
    metric = make_fid(extractor, weights)
    images = reference_images(reference, n) if target is None else target_world_images(reference, *target, n)
    for i in range(0, len(images), 500):
        metric.update(images[i:i + 500], real=True)
    state = {k: getattr(metric, k).detach().clone() for k in
             ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    save_file(state, tmp)
    tmp.replace(cache)
    return state


def cell_fids(ctx, cell, specs=None) -> list[dict]:
    """FID[extractor] of a cell's images for each FID spec (default: the suite's list, primary
    first) against the spec's reference set and, for SynthFaces references, also against the
    target-matched ground truth (`target_value`). The images are read once for every spec."""
    specs = list(ctx.suite.fid if specs is None else specs)
    metrics: dict[tuple[int, str], object] = {}
    for i, spec in enumerate(specs):
        references = {"value": None}
        if spec.reference.startswith("synthfaces:") and all(a in ATTRIBUTES for a in cell.setting.attributes):
            references["target_value"] = (cell.setting.attributes, cell.setting.target_vector())
        for key, target in references.items():
            metric = metrics[i, key] = make_fid(spec.extractor, spec.weights)
            state = reference_state(ctx.store.out, spec.extractor, spec.reference, spec.n, spec.weights, target)
            for name, value in state.items():
                setattr(metric, name, value)
    for start in range(0, len(cell.seeds), 500):
        images = ctx.store.load_images(cell.cell_id, cell.seeds[start:start + 500])
        for metric in metrics.values():
            metric.update(images, real=False)
    return [{"extractor": spec.extractor, "reference": spec.reference, "n_reference": spec.n, "n": len(cell.seeds),
             **{key: float(metric.compute()) for (j, key), metric in metrics.items() if j == i}}
            for i, spec in enumerate(specs)]
