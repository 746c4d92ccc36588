"""diffaudit's FID (torchmetrics' FrechetInceptionDistance over a named extractor) equals
pytorch-fid's formula, and its KID the closed-form unbiased polynomial-kernel MMD^2, on the same
features.

pytorch-fid itself cannot be installed beside diffaudit (it needs torchvision), so its
`calculate_frechet_distance` is written out below from its documented steps; the network half of
the parity (same features from the same weights file) is benchmarks/inception_parity.py."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from audit.metrics import fid as F
from audit.registry import FID_EXTRACTORS, FidExtractor


def pytorch_fid_formula(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
    """pytorch-fid: statistics as compute_statistics_of_path makes them (np.mean, np.cov with
    rowvar=False, so ddof=1), then calculate_frechet_distance: scipy's sqrtm of sigma1 @ sigma2,
    eps added to both diagonals when that square root is not finite, the real part when complex."""
    mu1, mu2 = features_a.mean(axis=0), features_b.mean(axis=0)
    sigma1, sigma2 = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)  # pytorch-fid raises here
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def unbiased_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """KID's estimator (Binkowski et al.): unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3; the
    within-set terms leave out k(x_i, x_i), the cross term keeps every pair."""
    m, d = x.shape
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.mean())


class Passthrough(nn.Module):
    """An extractor whose 'images' are already features: FID and KID see exactly these numbers."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


@pytest.fixture
def fixed(monkeypatch):
    """Registers the `fixed` extractor for features of a given dimension."""
    def register(dim: int) -> str:
        monkeypatch.setitem(FID_EXTRACTORS, "fixed", FidExtractor(lambda: Passthrough(dim), dim))
        return "fixed"
    return register


def diffaudit_fid(a: np.ndarray, b: np.ndarray, extractor: str) -> float:
    return F.fid_between(torch.from_numpy(a), torch.from_numpy(b), extractor, batch=64)  # several batches


def correlated(rng: np.random.Generator, n: int, d: int, scale: float = 1.0) -> np.ndarray:
    """n Gaussian features with a random full covariance and a random mean."""
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * scale / np.sqrt(d) + rng.normal(size=d)


def test_fid_of_a_scaled_and_shifted_copy_is_known_exactly(fixed):
    """Y = s X + c: sigma_Y = s^2 sigma_X on the sample too, so FID = |mu_X - mu_Y|^2 + (1 - s)^2 tr(sigma_X)."""
    rng = np.random.default_rng(0)
    x = correlated(rng, 400, 48)
    y = 0.5 * x + rng.normal(size=48)
    known = float(np.sum((x.mean(0) - y.mean(0)) ** 2) + 0.25 * np.trace(np.cov(x, rowvar=False)))
    assert pytorch_fid_formula(x, y) == pytest.approx(known, rel=1e-10)
    assert diffaudit_fid(x, y, fixed(48)) == pytest.approx(known, rel=1e-10)
    assert diffaudit_fid(x, x, "fixed") == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize(("n", "d", "rel"), [(300, 64, 1e-10),  # full-rank covariances
                                             (24, 64, 1e-8)])    # n < d: a singular product
def test_fid_equals_pytorch_fid_formula_on_fixed_features(fixed, n, d, rel):
    rng = np.random.default_rng(n)
    x, y = correlated(rng, n, d), correlated(rng, n, d, scale=1.5)
    expected = pytorch_fid_formula(x, y)
    assert expected > 1  # two different distributions, far from 0
    assert diffaudit_fid(x, y, fixed(d)) == pytest.approx(expected, rel=rel)
    assert diffaudit_fid(y, x, "fixed") == pytest.approx(expected, rel=rel)  # FID is symmetric


def test_kid_without_subsets_equals_the_unbiased_polynomial_mmd(fixed):
    rng = np.random.default_rng(1)
    x, y = correlated(rng, 60, 32), correlated(rng, 60, 32, scale=1.5)
    for a, b in ((x, y), (x, x)):
        metric = F.make_kid(fixed(32), 60, 60, subsets=1, subset_size=60)  # one subset: all of both sets
        metric.update(torch.from_numpy(a), real=True)
        metric.update(torch.from_numpy(b), real=False)
        mean, std = metric.compute()
        assert float(mean) == pytest.approx(unbiased_poly_mmd(a, b), rel=1e-10) and float(std) == 0
    # A set against itself: exactly -2 (mean k(x, x) - mean k(x_i, x_j), i != j) / m, as kid_subset_size says.
    k = (x @ x.T / 32 + 1) ** 3
    assert unbiased_poly_mmd(x, x) == pytest.approx(-2 * (np.diag(k).mean() - k[~np.eye(60, dtype=bool)].mean()) / 60)


def _photos():
    """Real photos at native size: the astronaut (512 px) and 256-px crops; LFW faces (25 px)."""
    data = pytest.importorskip("skimage.data")
    astronaut = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    crops = torch.stack([astronaut[:, y:y + 256, x:x + 256] for x, y in ((0, 0), (128, 64), (256, 0), (200, 256),
                                                                         (64, 200))])
    faces = torch.from_numpy(data.lfw_subset()[:6]).float().unsqueeze(1).expand(-1, 3, -1, -1)
    return [astronaut, *crops], faces


def test_fid_inception_equals_pytorch_fid_formula_on_real_images(inception_weights):
    """The FID Inception network (random weights in the standard file layout) on real photos:
    2048-d features from 6 images per set, so both covariances are singular, the case the
    formula's eps offset exists for. One 2048x2048 sqrtm (about 20 s on one core)."""
    from audit.metrics.inception import InceptionFeatures

    path, _ = inception_weights
    photos, faces = _photos()
    extract = InceptionFeatures(path)
    features_a = torch.cat([extract(batch) for batch in F.batches(photos)]).numpy()
    features_b = extract(faces).numpy()
    expected = pytorch_fid_formula(features_a, features_b)
    value = F.fid_between(photos, faces, "inception", weights=str(path))
    assert expected > 1
    assert value == pytest.approx(expected, rel=1e-6)
