"""Shared fixtures: tiny real diffusers models built in seconds, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

torch.set_num_threads(int(os.environ.get("DIFFAUDIT_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_unet():
    """A random 32x32 UNet2DModel with the zoo's block layout at a fraction of the width."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, attention_head_dim=8, norm_num_groups=4).eval()


@pytest.fixture(scope="session")
def tiny_ddim():
    from diffusers import DDIMScheduler

    from audit.zoo.recipes import SCHEDULER

    return DDIMScheduler(**SCHEDULER)
