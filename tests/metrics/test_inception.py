"""FID[inception]: the pure-torch FID InceptionV3 loads a weights file laid out like the standard
pt_inception-2015-12-05 file (random weights here, from the `inception_weights` fixture: the real
file cannot be downloaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.metrics.inception import FIDInceptionV3, InceptionFeatures, load_fid_inception

# Key names and shapes of the standard FID Inception file (torchvision's Inception3 layout
# without the auxiliary classifier, 1008 classes), written out independently of the module.
EXPECTED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch3x3dbl_3.bn.bias": (96,),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
N_CONVS = 94  # every conv is conv + bn (weight, bias, running_mean, running_var, num_batches_tracked)


def test_state_dict_has_the_standard_layout():
    state = FIDInceptionV3().state_dict()
    for key, shape in EXPECTED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == N_CONVS * 6 + 2
    assert not any(k.startswith("AuxLogits") for k in state)
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960


def test_weights_load_strictly_and_give_2048_d_features(inception_weights):
    path, saved = inception_weights
    features = InceptionFeatures(path)
    images = torch.rand(2, 3, 32, 32)
    out = features(images)
    assert out.shape == (2, 2048) and out.dtype == torch.float64 and torch.isfinite(out).all()
    with torch.no_grad():  # resized to 299x299 and scaled to [-1, 1] like pytorch-fid
        resized = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        expected = saved.pooled(resized * 2 - 1).double()
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, InceptionFeatures(model=FIDInceptionV3().eval())(images))  # weights matter
    assert features(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)).shape == (1, 2048)


def test_older_files_without_batch_counters_load(inception_weights, tmp_path):
    path, saved = inception_weights
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if not k.endswith("num_batches_tracked")}
    assert len(state) == N_CONVS * 5 + 2
    torch.save(state, tmp_path / "old.pth")
    loaded = load_fid_inception(tmp_path / "old.pth")
    torch.testing.assert_close(loaded.fc.weight, saved.fc.weight)


def test_missing_or_wrong_weights_fail_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05") as missing:
        load_fid_inception(None)
    assert "\n" not in str(missing.value) and "weights:" in str(missing.value)
    with pytest.raises(FileNotFoundError, match="not found at"):
        load_fid_inception(tmp_path / "nowhere.pth")
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not an FID Inception state dict") as wrong:
        load_fid_inception(tmp_path / "wrong.pth")
    assert "\n" not in str(wrong.value)


def test_fid_with_named_inception_extractor(inception_weights):
    from audit.metrics.fid import extractor_tag, fid_between, make_fid
    from audit.spec import FidSpec

    path, _ = inception_weights
    spec = FidSpec(extractor="inception", reference="synthfaces:biased", weights=str(path))
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32) * 0.5   # darker: far apart in feature space
    value = fid_between(a, b, spec.extractor, weights=spec.weights)  # each FID costs a 2048x2048 eigensolve
    assert np.isfinite(value) and value > 1
    assert extractor_tag("inception", str(path)).startswith("inception-pt_inception-2015-12-05-6726825d-")
    with pytest.raises(FileNotFoundError, match="needs the FID Inception weights"):
        make_fid("inception")
    with pytest.raises(ValueError, match="applies to the inception extractor"):
        make_fid("synthfaces", weights=str(path))
