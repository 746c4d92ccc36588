"""Tiny random pipelines of each real-model family, saved with save_pretrained (offline, seconds):
Stable-Diffusion-like (UNet2DConditionModel + VAE + CLIP text encoder), SDXL-like (two text
encoders, pooled embeddings and size conditions) and unconditional (DDPMPipeline layout)."""

from __future__ import annotations

import pytest
import torch

from audit.zoo.tokenizer import t5_tokenizer


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


# Transformer families, built from diffusers' own pipeline tests' recipe for dummy components
# (a few tiny layers, random weights). CLIP tokenizers pad to 77 and T5's to 512, as the released
# models do: the pipelines' prompt encoding depends on both lengths.


@pytest.fixture(scope="session")
def clip77_dir(tmp_path_factory):
    from audit.zoo.tokenizer import save_tokenizer

    path = tmp_path_factory.mktemp("clip77-tokenizer")
    save_tokenizer(path, max_length=77)
    return path


def t5_encoder(tokenizer, width: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config).eval()


def clip77_encoder(tokenizer, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=8,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def flow_vae(sample_size: int, shift_factor: float | None = 0.0609, scaling_factor: float = 1.5035):
    """An SD3/Flux-style VAE (no quant convs, a shift factor); scale factor 2."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=4, sample_size=sample_size, scaling_factor=scaling_factor,
                         shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False).eval()


@pytest.fixture(scope="session")
def sd3_dir(tmp_path_factory, clip77_dir):
    """SD3: CLIP-L and CLIP-G with projection (16 + 16 wide, padded to T5's 32), T5, an MMDiT on
    16x16 latents with patch 1 (256 image tokens, pooled to 8x8 for h), flow matching (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer

    clip = CLIPTokenizer.from_pretrained(clip77_dir)
    t5 = t5_tokenizer()
    torch.manual_seed(3)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=4, num_layers=3,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
                                        pos_embed_max_size=16).eval()
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=flow_vae(32), text_encoder=clip77_encoder(clip, True), tokenizer=clip,
                                    text_encoder_2=clip77_encoder(clip, True), tokenizer_2=clip,
                                    text_encoder_3=t5_encoder(t5), tokenizer_3=t5)
    path = tmp_path_factory.mktemp("tiny-sd3")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def flux_dir(tmp_path_factory, clip77_dir):
    """Flux.1-dev-like: CLIP (pooled, 16) + T5 (32), one double-stream and two single-stream blocks,
    guidance embedding; a 64 px VAE with 4 latent channels packed 2x2 into 16-wide tokens (16x16
    tokens, pooled to 8x8 for h); flow matching with the resolution-dependent shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizer

    clip = CLIPTokenizer.from_pretrained(clip77_dir)
    t5 = t5_tokenizer()
    torch.manual_seed(4)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, axes_dims_rope=(2, 2, 4),
                                         guidance_embeds=True).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler,
                        vae=flow_vae(64, shift_factor=0.1159, scaling_factor=0.3611),
                        text_encoder=clip77_encoder(clip), tokenizer=clip,
                        text_encoder_2=t5_encoder(t5), tokenizer_2=t5)
    path = tmp_path_factory.mktemp("tiny-flux")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pixart_dir(tmp_path_factory):
    """PixArt-Sigma: T5 (32) + a DiT on 16x16 latents, patch 1 (256 tokens, pooled to 8x8 for h),
    learned variance (8 output channels), DPM-Solver++ as the released model ships."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    t5 = t5_tokenizer()
    torch.manual_seed(5)
    transformer = PixArtTransformer2DModel(sample_size=16, num_layers=3, patch_size=1, attention_head_dim=8,
                                           num_attention_heads=2, caption_channels=32, in_channels=4,
                                           cross_attention_dim=16, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False,
                                           norm_eps=1e-6).eval()
    pipe = PixArtSigmaPipeline(tokenizer=t5, text_encoder=t5_encoder(t5), vae=flow_vae(32, shift_factor=None,
                                                                                         scaling_factor=0.13025),
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler())
    path = tmp_path_factory.mktemp("tiny-pixart")
    pipe.save_pretrained(path)
    return path
