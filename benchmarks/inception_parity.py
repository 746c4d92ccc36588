"""Network parity of FID[inception] with pytorch-fid: the same weights file and the same real
photos give the same 2048-d features and the same FID through pytorch-fid's own code and through
diffaudit's.

pytorch-fid needs torchvision, which diffaudit does not depend on, and the real
pt_inception-2015-12-05-6726825d.pth cannot be downloaded here, so this runs in a scratch virtual
environment (torch==2.13.0, torchvision 0.28.0, pytorch-fid, diffaudit's light dependencies;
docs/metrics.md has the recipe) with one random FID Inception state dict saved under the real
file's name. pytorch-fid loads it through its own InceptionV3(use_fid_inception=True), whose
weight download is pointed at that file; diffaudit loads it through its FID[inception] extractor.
Both read the same PNG folders (skimage's astronaut, its crops and resizes, LFW faces, at native
sizes; and a Gaussian-blurred copy) as their own pipelines do: pytorch-fid's get_activations
(PIL, ToTensor, one image per batch since sizes differ) and diffaudit's read_images + fid_between.

    PYTHONPATH=. /tmp/fidparity-venv/bin/python benchmarks/inception_parity.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from audit.metrics import fid as F
from audit.metrics.inception import WEIGHTS_NAME, FIDInceptionV3, InceptionFeatures

RESULT = Path(__file__).parent / "results" / "inception_parity.json"


def random_weights(path: Path, seed: int) -> None:
    """A random FID Inception state dict in the standard layout: default conv init, BatchNorm
    statistics and affine parameters randomised (so a block that skipped or misread them would
    show), variances kept where activations stay near unit scale through the 94 convs."""
    torch.manual_seed(seed)
    model = FIDInceptionV3().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.1, 0.2)
            module.weight.data.uniform_(0.8, 1.2)
            module.bias.data.uniform_(-0.1, 0.1)
    torch.save(model.state_dict(), path)


def pytorch_fid_network(path: Path):
    """pytorch-fid's InceptionV3([3], use_fid_inception=True), its weights read from `path`
    (strictly, by pytorch-fid's own load_state_dict) instead of downloaded."""
    import pytorch_fid.inception as pf

    def local(url, **_):
        assert url == pf.FID_WEIGHTS_URL and url.endswith(WEIGHTS_NAME), url
        return torch.load(path, map_location="cpu", weights_only=True)

    pf.load_state_dict_from_url = local
    return pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], use_fid_inception=True).eval()


def photos(n_faces: int) -> list[Image.Image]:
    """Real photos of mixed sizes: astronaut (512 px), two resizes, nine 256-px crops, LFW faces (25 px)."""
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    made = [astronaut, astronaut.resize((256, 256), Image.BICUBIC), astronaut.resize((128, 128), Image.BICUBIC)]
    made += [astronaut.crop((x, y, x + 256, y + 256)) for x in (0, 128, 256) for y in (0, 128, 256)]
    faces = data.lfw_subset()[:n_faces]
    return made + [Image.fromarray((face * 255).round().astype(np.uint8)).convert("RGB") for face in faces]


def write_folders(root: Path, n_faces: int, blur: float) -> dict[str, Path]:
    folders = {"real": root / "real", "blurred": root / "blurred"}
    for name, folder in folders.items():
        folder.mkdir()
        for i, photo in enumerate(photos(n_faces)):
            (photo if name == "real" else photo.filter(ImageFilter.GaussianBlur(blur))).save(folder / f"{i:04d}.png")
    return folders


def pytorch_fid_side(model, files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pytorch-fid's activations and statistics (calculate_activation_statistics' two lines)."""
    from pytorch_fid.fid_score import get_activations

    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        acts = get_activations([str(f) for f in files], model, batch_size=1, dims=2048, device="cpu", num_workers=0)
    return acts, np.mean(acts, axis=0), np.cov(acts, rowvar=False)


def pytorch_fid_distance(stats_a, stats_b) -> tuple[float, bool]:
    """pytorch-fid's calculate_frechet_distance, and whether it had to add eps to the diagonals."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        value = calculate_frechet_distance(*stats_a, *stats_b)
    return float(value), "singular product" in printed.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=20, help="LFW faces per set (after 12 astronaut images)")
    parser.add_argument("--blur", type=float, default=2.0, help="Gaussian blur radius of the second set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import pytorch_fid
    import scipy
    import torchmetrics
    import torchvision

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / WEIGHTS_NAME
        random_weights(weights, args.seed)
        theirs, ours = pytorch_fid_network(weights), InceptionFeatures(weights)
        folders = write_folders(Path(tmp), args.faces, args.blur)
        files = {name: F.reference_files(str(folder), 10_000) for name, folder in folders.items()}
        images = {name: F.read_images(paths) for name, paths in files.items()}

        pf = {name: pytorch_fid_side(theirs, paths) for name, paths in files.items()}
        # diffaudit's features one image at a time, to pair them with pytorch-fid's per file
        mine = {name: torch.cat([ours(image[None]) for image in imgs]).numpy() for name, imgs in images.items()}
        diff = np.concatenate([np.abs(pf[name][0] - mine[name]).ravel() for name in files])
        scale = np.concatenate([np.abs(pf[name][0]).ravel() for name in files])

        fid_theirs, eps_used = pytorch_fid_distance(pf["real"][1:], pf["blurred"][1:])
        fid_ours = F.fid_between(images["real"], images["blurred"], "inception", weights=str(weights))
        own_stats = {name: (feats.mean(axis=0), np.cov(feats, rowvar=False)) for name, feats in mine.items()}
        fid_formula_on_ours, _ = pytorch_fid_distance(own_stats["real"], own_stats["blurred"])
        self_theirs, _ = pytorch_fid_distance(pf["real"][1:], pf["real"][1:])
        self_ours = F.fid_between(images["real"], images["real"], "inception", weights=str(weights))

    result = {
        "command": "PYTHONPATH=. /tmp/fidparity-venv/bin/python benchmarks/inception_parity.py",
        "weights": f"random FID Inception state dict (seed {args.seed}) saved as {WEIGHTS_NAME}",
        "images_per_set": len(files["real"]),
        "image_sizes_hw": sorted({tuple(image.shape[-2:]) for image in images["real"]}, reverse=True),
        "second_set": f"the same photos, Gaussian blur radius {args.blur}",
        "features": {
            "max_abs_difference": float(diff.max()),
            "mean_abs_difference": float(diff.mean()),
            "max_abs_feature": float(scale.max()),
            "mean_abs_feature": float(scale.mean()),
        },
        "fid_real_vs_blurred": {
            "pytorch_fid": fid_theirs,
            "diffaudit": fid_ours,
            "abs_difference": abs(fid_ours - fid_theirs),
            "rel_difference": abs(fid_ours - fid_theirs) / abs(fid_theirs),
            "pytorch_fid_formula_on_diffaudit_features": fid_formula_on_ours,
            "pytorch_fid_added_eps": eps_used,
        },
        "fid_real_vs_itself": {"pytorch_fid": self_theirs, "diffaudit": self_ours},
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "pytorch_fid": pytorch_fid.__version__, "torchmetrics": torchmetrics.__version__,
                     "scipy": scipy.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "threads": args.threads,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
