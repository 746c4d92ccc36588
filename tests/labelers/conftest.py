"""Real photos shipped by scikit-image, as the labelers receive images: [N, 3, H, W] in [0, 1].

- astronaut(): Eileen Collins, a woman astronaut, 512x512 colour portrait.
- lfw_subset(): 200 grayscale 25x25 patches from LFW; the first 100 are faces, the last 100
  non-faces (background crops) -- scikit-image's documented split.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

skimage_data = pytest.importorskip("skimage.data")


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """HxW or HxWx3 (uint8 or float in [0, 1]) -> [1, 3, H, W] float."""
    x = torch.from_numpy(np.asarray(array, dtype=np.float32) / (255.0 if array.dtype == np.uint8 else 1.0))
    x = x[..., None].expand(-1, -1, 3) if x.ndim == 2 else x
    return x.permute(2, 0, 1)[None].contiguous()


def upscale(patches: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(patches, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="session")
def astronaut() -> torch.Tensor:
    return to_tensor(skimage_data.astronaut())


@pytest.fixture(scope="session")
def lfw() -> torch.Tensor:
    """[200, 3, 25, 25]: faces 0..99, non-faces 100..199."""
    patches = torch.from_numpy(np.asarray(skimage_data.lfw_subset(), dtype=np.float32))
    if patches.max() > 1:
        patches = patches / 255
    return patches[:, None].expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(scope="session")
def gray() -> torch.Tensor:
    return torch.full((1, 3, 256, 256), 0.5)


def check_result(result, labeler, n: int) -> None:
    """The LabelResult contract: one [n, K] matrix per declared attribute, valid rows sum to 1,
    invalid rows are zero and carry a reason."""
    assert set(result.probs) == set(labeler.attributes)
    for attribute, classes in labeler.attributes.items():
        probs = result.probs[attribute]
        assert probs.shape == (n, len(classes))
        assert np.all(probs >= 0)
        np.testing.assert_allclose(probs[result.valid].sum(1), 1.0, atol=1e-5)
        assert np.all(probs[~result.valid] == 0)
    assert result.valid.dtype == bool and result.valid.shape == (n,)
    assert len(result.reasons) == n
    for ok, reason in zip(result.valid, result.reasons, strict=True):
        assert (reason is None) if ok else bool(reason)


@pytest.fixture
def check():
    return check_result


@pytest.fixture
def resize():
    """resize(images, size): bicubic resize to size x size, clamped to [0, 1]."""
    return upscale
