"""What the transformer families (SD3, Flux, PixArt-Sigma) share: they load as their diffusers
pipeline, whose prompt encoding and latent helpers they reuse (the denoising loop stays the
adapter's), sample with the scheduler they ship with, and take h from a middle transformer block."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import ClassVar

import torch

from audit.models.families.base import Family


class TransformerFamily(Family):
    default_scheduler = None
    single_text_context = False
    # The diffusers pipeline it loads as. Recognised by model_index.json's `_class_name` only: other
    # pipelines on the same transformer (PixArt-Alpha, Flux Kontext) encode prompts differently.
    pipeline_class: ClassVar[str] = ""

    def __init__(self, pipe):
        self.pipe = pipe

    @classmethod
    def load(cls, path: Path, index: dict, device: str, dtype: torch.dtype, variant: str | None,
             use_safetensors: bool | None) -> dict:
        import diffusers

        # low_cpu_mem_usage=False: the default wants `accelerate` and warns on every load without it.
        pipe = getattr(diffusers, cls.pipeline_class).from_pretrained(
            path, dtype=dtype, variant=variant, use_safetensors=use_safetensors,
            low_cpu_mem_usage=False).to(device)
        for module in (pipe.transformer, pipe.vae, *cls.text_encoders(pipe)):
            module.eval()
        return {"unet": None, "scheduler": pipe.scheduler, "vae": pipe.vae, "text_encoder": pipe.text_encoder,
                "tokenizer": pipe.tokenizer, "family": cls(pipe)}

    @staticmethod
    def text_encoders(pipe) -> list[torch.nn.Module]:
        return [getattr(pipe, name) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")
                if getattr(pipe, name, None) is not None]

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def conditional(self) -> bool:
        return True

    def modules(self) -> list[torch.nn.Module | None]:
        return [self.pipe.transformer, *self.text_encoders(self.pipe), self.pipe.vae]

    def info(self) -> dict:
        return {"family": self.name, "transformer": type(self.denoiser).__name__,
                "text_encoders": [type(e).__name__ for e in self.text_encoders(self.pipe)]}

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def noise_shape(self) -> tuple[int, ...]:
        size = self.denoiser.config.sample_size
        return (self.denoiser.config.in_channels, size, size)

    def token_grid(self) -> tuple[int, int]:
        _, height, width = self.noise_shape()
        patch = self.denoiser.config.patch_size
        return height // patch, width // patch

    def hspace_default(self) -> str:
        return f"transformer_blocks.{len(self.denoiser.transformer_blocks) // 2}"

    def set_timesteps(self, scheduler, steps: int, **options) -> None:
        """As the pipeline's retrieve_timesteps, passing only what the scheduler takes."""
        accepted = inspect.signature(scheduler.set_timesteps).parameters
        options = {k: v for k, v in options.items() if k in accepted and v is not None}
        if "sigmas" in options:
            scheduler.set_timesteps(**options)
        else:
            scheduler.set_timesteps(steps, **options)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = x.to(vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None) is not None:
            latents = latents + vae.config.shift_factor
        return vae.decode(latents).sample
