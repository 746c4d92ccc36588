"""FID with torchmetrics' FrechetInceptionDistance and a named, pluggable feature extractor.

The extractor is part of the metric's name (FID[inception], FID[mobilenet_v2], a plug-in's):
FIDs computed with different extractors are different metrics and are never compared.
Extractors and generated reference sets come from the registry (audit.registry.FID_EXTRACTORS,
REFERENCES); any other reference is a directory of images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from audit.registry import FID_EXTRACTORS, reference_source, resolve


def weighted_extractors() -> list[str]:
    """Extractors whose weights file the user supplies (fid.weights)."""
    return sorted(name for name, entry in FID_EXTRACTORS.items() if entry.weighted)


def make_feature(extractor: str, weights: str | None = None) -> nn.Module:
    """The named extractor as a torchmetrics feature module (inputs in [0, 1], any size: each
    extractor resizes to its own input size in its forward)."""
    if extractor not in FID_EXTRACTORS:
        raise ValueError(f"unknown FID extractor {extractor!r}; available: {', '.join(sorted(FID_EXTRACTORS))}")
    entry = FID_EXTRACTORS[extractor]
    factory = resolve({extractor: entry.factory}, extractor, "FID extractor")
    if entry.weighted:
        return factory(weights)
    if weights:
        raise ValueError(f"fid.weights applies to the {', '.join(weighted_extractors())} extractor, "
                         f"not {extractor!r}")
    return factory()


def make_fid(extractor: str, weights: str | None = None):
    """A torchmetrics FrechetInceptionDistance over the named extractor (inputs in [0, 1])."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=make_feature(extractor, weights), normalize=True)


def kid_subset_size(n_a: int, n_b: int) -> int:
    """KID's subset size: min(1000, smaller set // 2) (at least 2): torchmetrics' default of 1000,
    capped at half the smaller set so the random subsets differ and the std over subsets means
    something (a subset of the whole set makes every subset the same, std 0).

    A set against itself gives a slightly negative KID, not exactly 0: its subsets share images,
    and the unbiased estimator's cross term keeps the k(x, x) pairs its within-set terms drop
    (about -2 (E k(x,x) - E k(x,x')) / n)."""
    return max(2, min(1000, min(n_a, n_b) // 2))


def make_kid(extractor: str, n_a: int, n_b: int, weights: str | None = None, subsets: int = 100,
             subset_size: int | None = None):
    """A torchmetrics KernelInceptionDistance over the named extractor; compute() gives the mean
    and standard deviation of the unbiased MMD^2 (cubic polynomial kernel) over `subsets` random
    subsets of `subset_size` (default kid_subset_size(n_a, n_b)) images from each set. One subset
    of all n images (n_a == n_b == subset_size) is the closed-form unbiased MMD^2 of the two sets."""
    from torchmetrics.image.kid import KernelInceptionDistance

    return KernelInceptionDistance(feature=make_feature(extractor, weights), subsets=subsets,
                                   subset_size=subset_size or kid_subset_size(n_a, n_b), normalize=True)


def batches(images, batch: int = 500):
    """Stacked batches of at most `batch` images, each of one size: a [N, 3, H, W] tensor is
    sliced; a list of [3, H, W] tensors of mixed sizes is grouped by size (first-seen order), so
    every image reaches the extractor at its native size."""
    if isinstance(images, torch.Tensor):
        for i in range(0, len(images), batch):
            yield images[i:i + batch]
        return
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for image in images:
        groups.setdefault(tuple(image.shape), []).append(image)
    for group in groups.values():
        for i in range(0, len(group), batch):
            yield torch.stack(group[i:i + batch])


def extractor_tag(extractor: str, weights: str | None = None) -> str:
    """The extractor's name in cache files: user-supplied weights, by content, are part of how
    stats were made."""
    if extractor in FID_EXTRACTORS and FID_EXTRACTORS[extractor].weighted and weights:
        from audit.sources import file_digest

        path = Path(weights)
        return f"{extractor}-{path.stem}-{file_digest(path)[:12] if path.is_file() else 'missing'}"
    return extractor


def feature_dim(extractor: str) -> int:
    """The number of features the extractor gives per image (the size of FID's covariance)."""
    return FID_EXTRACTORS[extractor].dim()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def reference_files(reference: str, n: int, base_dir: Path | None = None) -> list[Path]:
    """The (up to n) image files of a directory reference that FID reads, in name order."""
    folder = Path(reference) if base_dir is None else base_dir / reference
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:n]


def reference_problem(spec) -> str | None:
    """Why a directory FID reference cannot back an FID (one line naming the fix), or None.

    It must hold at least the fid.n images the suite asks for (the count metrics.json and the
    report state), and more than the extractor has features: with no more images than features
    the reference covariance is singular and FID measures mostly the small sample (two samples of
    the same world, see docs/metrics.md). torchmetrics itself only refuses fewer than 2. Generated
    reference sets (a plug-in's PREFIX:NAME) are drawn at exactly fid.n; only their name is checked."""
    generated = reference_source(spec.reference)
    if generated is not None:
        references, name = generated
        if name not in references.names():
            return (f"fid.reference {spec.reference}: unknown reference set {name!r}; allowed: "
                    f"{', '.join(references.names())}")
        return None
    folder = Path(spec.reference)
    if not folder.is_dir():
        from audit.registry import REFERENCES

        named = "".join(f"{prefix}:NAME, " for prefix in sorted(REFERENCES))
        return (f"fid.reference {spec.reference}: no such directory; give {named}a directory of "
                f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images")
    count, dim = len(reference_files(spec.reference, spec.n)), feature_dim(spec.extractor)
    if count < spec.n:
        fix = f"lower fid.n to {count} or add images" if count > dim else \
            f"add images (FID[{spec.extractor}] needs more than {dim}, its feature dimension)"
        return f"fid.reference {spec.reference} holds {count} images, fewer than fid.n = {spec.n}: {fix}"
    if spec.n <= dim:
        return (f"fid.n {spec.n} is too few reference images for FID[{spec.extractor}], whose features have {dim} "
                f"dimensions: the reference covariance would be singular and FID would mostly measure the small "
                f"sample; use more than {dim} images in {spec.reference}")
    return None


# How directory images are preprocessed before the extractor: "native" = read at their own size,
# only the extractor resizes. Part of the cache name, so statistics made from images resized to
# 32 px up front (earlier versions) are never reused.
DIRECTORY_PREPROCESSING = "native"


def reference_identity(reference: str, n: int) -> str:
    """The reference set as FID reads it: a generated set by name; a directory by the names,
    sizes and modification times of the files read and how they are preprocessed
    (DIRECTORY_PREPROCESSING), so replacing images, or changing preprocessing, invalidates cached
    stats."""
    if reference_source(reference) is not None:
        return reference
    import hashlib

    digest = hashlib.sha256()
    for f in reference_files(reference, n):
        st = f.stat()
        digest.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"{reference}@{digest.hexdigest()[:12]}-{DIRECTORY_PREPROCESSING}"


def fid_identity(spec) -> dict:
    """Everything an FID entry depends on besides the cell's images."""
    return {"extractor": extractor_tag(spec.extractor, spec.weights), "reference": reference_identity(spec.reference,
                                                                                                   spec.n),
            "n": spec.n}


def fid_between(a: torch.Tensor, b: torch.Tensor, extractor: str, batch: int = 500,
                weights: str | None = None) -> float:
    """FID between two image sets ([N, 3, H, W] in [0, 1]); `a` is the reference."""
    metric = make_fid(extractor, weights)
    for part in batches(a, batch):
        metric.update(part, real=True)
    for part in batches(b, batch):
        metric.update(part, real=False)
    return float(metric.compute())


def kid_between(a, b, extractor: str, batch: int = 500, weights: str | None = None,
                subsets: int = 100) -> tuple[float, float]:
    """KID (mean, std over subsets; see make_kid) between two image sets; `a` is the reference."""
    metric = make_kid(extractor, len(a), len(b), weights, subsets)
    for part in batches(a, batch):
        metric.update(part, real=True)
    for part in batches(b, batch):
        metric.update(part, real=False)
    mean, std = metric.compute()
    return float(mean), float(std)


def read_images(files: list[Path]):
    """Image files at their native size, in [0, 1]: one [N, 3, H, W] tensor when all share a
    size, else a list of [3, H, W] tensors (see `batches`). Never resized here: only the
    extractor resizes, to its own input size."""
    import numpy as np
    from PIL import Image

    images = []
    for f in files:
        with Image.open(f) as image:
            images.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255)
    if images and len({tuple(image.shape) for image in images}) == 1:
        return torch.stack(images)
    return images


def reference_images(reference: str, n: int, base_dir: Path | None = None):
    """[n, 3, H, W] in [0, 1] from a generated set (a plug-in's PREFIX:NAME) or a directory of image
    files; directory images keep their native size (a list of [3, H, W] when sizes differ; see
    read_images)."""
    generated = reference_source(reference)
    if generated is not None:
        references, name = generated
        return references.images(name, n)
    folder = Path(reference) if base_dir is None else base_dir / reference
    files = reference_files(reference, n, base_dir)
    if len(files) < 2:
        raise FileNotFoundError(f"FID reference {folder} holds {len(files)} images; need at least 2")
    return read_images(files)


def target_reference_images(reference: str, attributes: list[str], target: list[float], n: int) -> torch.Tensor:
    """The generated reference set with the guided attributes' joint distribution replaced by the
    target: the distribution a perfect debiasing method would produce, so FID against it measures
    what guidance costs in quality without charging it for the shift it was asked to make."""
    references, name = reference_source(reference)
    return references.target_images(name, attributes, target, n)


def matches_target(reference: str, attributes: list[str]) -> bool:
    """Whether FID to the target-matched reference (`target_value`) can be taken: the reference is
    a generated set that can redraw these attributes at a target distribution."""
    generated = reference_source(reference)
    return generated is not None and generated[0].can_match(attributes)
