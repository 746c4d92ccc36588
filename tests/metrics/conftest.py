"""Fixtures shared by the FID tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """A random FID Inception state dict saved like the real pt_inception-2015-12-05 file (which
    cannot be downloaded here), BatchNorm statistics randomised so that loading them (or not)
    changes the features: (path, the model it came from)."""
    from audit.metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.1, 0.2)  # keeps random activations near unit scale
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(model.state_dict(), path)
    return path, model
