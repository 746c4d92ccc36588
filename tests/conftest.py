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


@pytest.fixture(scope="session")
def tiny_adapter(tiny_unet, tiny_ddim):
    from audit.models.adapter import ModelAdapter

    return ModelAdapter(unet=tiny_unet, scheduler=tiny_ddim, model_id="tiny-unconditional")


@pytest.fixture(scope="session")
def tiny_text_adapter(tiny_ddim, tmp_path_factory):
    """A random text-conditioned model: UNet2DConditionModel + CLIP text encoder + tokenizer."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from audit.models.adapter import ModelAdapter
    from audit.zoo.tokenizer import save_tokenizer

    tokenizer = save_tokenizer(tmp_path_factory.mktemp("tokenizer"), max_length=16)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=16,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    unet = UNet2DConditionModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                  "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                layers_per_block=1, attention_head_dim=2, norm_num_groups=4,
                                cross_attention_dim=16).eval()
    return ModelAdapter(unet=unet, scheduler=tiny_ddim, text_encoder=CLIPTextModel(config).eval(),
                        tokenizer=tokenizer, model_id="tiny-text")


@pytest.fixture(scope="session")
def tiny_text_model_dir(tiny_text_adapter, tmp_path_factory):
    """The tiny text-conditioned model saved in the zoo text model's layout: a pixel-space
    UNet2DConditionModel beside its CLIP text encoder, tokenizer and scheduler, no VAE."""
    import json

    path = tmp_path_factory.mktemp("tiny-t2i")
    components = {"unet": tiny_text_adapter.unet, "text_encoder": tiny_text_adapter.text_encoder,
                  "tokenizer": tiny_text_adapter.tokenizer, "scheduler": tiny_text_adapter.scheduler}
    for name, part in components.items():
        part.save_pretrained(path / name)
    index = {name: [type(part).__module__.split(".")[0], type(part).__name__] for name, part in components.items()}
    (path / "model_index.json").write_text(json.dumps({"_class_name": "TinyTextToImage", **index}))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_unet, tiny_ddim, tmp_path_factory):
    """The tiny unconditional model saved as a diffusers pipeline directory."""
    from diffusers import DDIMPipeline

    path = tmp_path_factory.mktemp("tiny-ddpm")
    DDIMPipeline(unet=tiny_unet, scheduler=tiny_ddim).save_pretrained(path)
    return path
