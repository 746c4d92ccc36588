"""Unconditional UNet2DModel pipelines (DDPMPipeline / DDIMPipeline layout, e.g.
google/ddpm-celebahq-256, and the zoo's pixel-space models): x is the image itself."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from audit.models.families.base import Family


class UNet2DFamily(Family):
    name = "unet2d"
    pipelines = ("DDPMPipeline", "DDIMPipeline")

    @classmethod
    def matches(cls, index: dict) -> bool:
        return "unet" in index and (index.get("text_encoder") or [None])[0] is None

    @classmethod
    def load(cls, path: Path, index: dict, device: str, dtype: torch.dtype, variant: str | None,
             use_safetensors: bool | None) -> dict:
        import diffusers

        weights = {"torch_dtype": dtype, "variant": variant, "use_safetensors": use_safetensors}
        # low_cpu_mem_usage=False: the default wants `accelerate` and warns on every load without it.
        unet = getattr(diffusers, index["unet"][1]).from_pretrained(path / "unet", low_cpu_mem_usage=False,
                                                                    **weights).to(device).eval()
        parts: dict = {"unet": unet}
        if (index.get("vae") or [None])[0] is not None:
            # Like diffusers' pipelines, decode in float32 when the VAE asks for it (SDXL's overflows in fp16).
            upcast = json.loads((path / "vae" / "config.json").read_text()).get("force_upcast", True)
            vae_dtype = torch.float32 if dtype == torch.float16 and upcast else dtype
            parts["vae"] = getattr(diffusers, index["vae"][1]).from_pretrained(
                path / "vae", torch_dtype=vae_dtype, variant=variant, low_cpu_mem_usage=False,
                use_safetensors=use_safetensors).to(device).eval()
        return parts

    def noise_shape(self) -> tuple[int, ...]:
        config = self.denoiser.config
        size = config.sample_size
        return (config.in_channels, *((size, size) if isinstance(size, int) else tuple(size)))

    def call(self, x: torch.Tensor, t, context) -> torch.Tensor:
        return self.denoiser(x, t).sample

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.adapter.vae
        if vae is None:
            return x
        latents = x.to(vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None) is not None:
            latents = latents + vae.config.shift_factor
        return vae.decode(latents).sample
