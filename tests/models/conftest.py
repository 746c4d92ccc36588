"""Tiny random pipelines of each real-model family, saved with save_pretrained (offline, seconds):
Stable-Diffusion-like (UNet2DConditionModel + VAE + CLIP text encoder), SDXL-like (two text
encoders, pooled embeddings and size conditions) and unconditional (DDPMPipeline layout)."""

from __future__ import annotations

import pytest
import torch


def text_encoder(tokenizer, with_projection: bool = False, hidden: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                            projection_dim=8, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def tiny_vae():
    """Two blocks: a vae_scale_factor of 2, so 8x8 latents decode to 16x16 images."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=4, sample_size=16, scaling_factor=0.5).eval()


def conditional_unet(cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                attention_head_dim=2, norm_num_groups=4, cross_attention_dim=cross_attention_dim,
                                **extra).eval()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from audit.zoo.tokenizer import save_tokenizer

    path = tmp_path_factory.mktemp("clip-tokenizer")
    save_tokenizer(path, max_length=16)
    return path


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory, tokenizer_dir):
    """An SD 1.x-style pipeline saved with its native PNDM scheduler, as the SD 1.5 repository is."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder(tokenizer), tokenizer=tokenizer,
                                   unet=conditional_unet(16), scheduler=PNDMScheduler(skip_prk_steps=True),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    path = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory, tokenizer_dir):
    """An SDXL-style pipeline: cross-attention on both encoders' states side by side (16 + 16), the
    UNet's added embedding = pooled projection (8) + 6 size conditions x 4."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1)
    unet = conditional_unet(32, addition_embed_type="text_time", addition_time_embed_dim=4,
                            projection_class_embeddings_input_dim=8 + 6 * 4)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=text_encoder(tokenizer),
                                     text_encoder_2=text_encoder(tokenizer, with_projection=True),
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                     scheduler=EulerDiscreteScheduler(), force_zeros_for_empty_prompt=True)
    path = tmp_path_factory.mktemp("tiny-sdxl")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ddpm_dir(tmp_path_factory, tiny_unet):
    """An unconditional pipeline in google/ddpm-celebahq-256's layout (DDPMPipeline, DDPMScheduler)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    path = tmp_path_factory.mktemp("tiny-ddpm-pipeline")
    DDPMPipeline(unet=tiny_unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    return path
