"""Flux.1: FluxTransformer2DModel (double-stream blocks, then single-stream blocks) on packed
latents (2x2 latent patches as tokens), conditioned on CLIP's pooled output and T5's states,
sampled by flow matching with a resolution-dependent shift. Guidance-distilled: no classifier-free
guidance (the batch is never doubled); when the transformer has `guidance_embeds` (FLUX.1-dev)
the model's guidance_scale is fed as its guidance embedding, otherwise (FLUX.1-schnell) ignored.
h: the image stream of the middle block counting both stacks (output[1] of either kind)."""

from __future__ import annotations

import numpy as np
import torch

from audit.models.families.base import Conditioning, timestep_batch
from audit.models.families.transformer import TransformerFamily


class FluxFamily(TransformerFamily):
    name = "flux"
    pipelines = ("FluxPipeline",)
    pipeline_class = "FluxPipeline"
    downloads = {
        "black-forest-labs/FLUX.1-schnell": "about 34 GB (Apache-2.0; 4 steps; dtype: bfloat16)",
        "black-forest-labs/FLUX.1-dev": "gated: accept its licence on the model page and `hf auth login` first; "
        "about 34 GB",
    }
    hspace_stream = 1
    max_sequence_length = 512  # the pipeline's default T5 length

    def image_size(self) -> int:
        """The transformer has no native size; FLUX.1's VAE states 1024, the pipeline's default."""
        size = self.pipe.vae.config.sample_size
        return size if isinstance(size, int) else size[0]

    def noise_shape(self) -> tuple[int, ...]:
        side = 2 * (self.image_size() // (self.vae_scale_factor * 2))
        return (self.denoiser.config.in_channels // 4, side, side)

    def pack(self, noise: torch.Tensor) -> torch.Tensor:
        b, c, h, w = noise.shape
        return self.pipe._pack_latents(noise, b, c, h, w)

    def token_grid(self) -> tuple[int, int]:
        _, h, w = self.noise_shape()
        return h // 2, w // 2

    def hspace_default(self) -> str:
        double, single = len(self.denoiser.transformer_blocks), len(self.denoiser.single_transformer_blocks)
        middle = (double + single) // 2
        if middle < double:
            return f"transformer_blocks.{middle}"
        return f"single_transformer_blocks.{middle - double}"

    def set_timesteps(self, scheduler, steps: int, **options) -> None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = scheduler.config
        if not c.get("use_flow_sigmas"):
            options["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        rows, cols = self.token_grid()
        options["mu"] = calculate_shift(rows * cols, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                        c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        super().set_timesteps(scheduler, steps, **options)

    @torch.no_grad()
    def condition(self, prompts, negative_prompt: str, guidance_scale: float):
        device = self.adapter.device
        embeds, pooled, text_ids = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                                           max_sequence_length=self.max_sequence_length)
        rows = {"encoder_hidden_states": embeds, "pooled_projections": pooled}
        if self.denoiser.config.guidance_embeds:
            rows["guidance"] = torch.full((len(prompts),), float(guidance_scale), device=device, dtype=torch.float32)
        rows_, cols = self.token_grid()
        image_ids = self.pipe._prepare_latent_image_ids(len(prompts), rows_, cols, device, embeds.dtype)
        return Conditioning(rows, {"txt_ids": text_ids, "img_ids": image_ids})

    def call(self, x: torch.Tensor, t, context) -> torch.Tensor:
        timestep = timestep_batch(t, len(x), x.device).to(x.dtype) / 1000
        return self.denoiser(hidden_states=x, timestep=timestep, return_dict=False, **context.kwargs())[0]

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        side = self.image_size()
        return super().decode(self.pipe._unpack_latents(x, side, side, self.vae_scale_factor))
