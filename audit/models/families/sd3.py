"""Stable Diffusion 3 / 3.5: SD3Transformer2DModel (MMDiT) on VAE latents, conditioned on CLIP-L and
CLIP-G (their states side by side, padded to T5's width, then T5's states after them; their
projected pooled outputs concatenated) and sampled by flow matching with classifier-free guidance.
h: the image stream of the middle joint block (`transformer_blocks.N`, output[1])."""

from __future__ import annotations

import torch

from audit.models.families.base import Conditioning, stacked, timestep_batch
from audit.models.families.transformer import TransformerFamily


class SD3Family(TransformerFamily):
    name = "sd3"
    pipelines = ("StableDiffusion3Pipeline",)
    pipeline_class = "StableDiffusion3Pipeline"
    downloads = {
        "stabilityai/stable-diffusion-3.5-medium": "gated: accept its licence on the model page and `hf auth login` "
        "first; about 25 GB with the T5-XXL encoder (bfloat16 in use: dtype: bfloat16)",
        "stabilityai/stable-diffusion-3.5-large": "gated: accept its licence on the model page and `hf auth login` "
        "first; about 50 GB",
        "stabilityai/stable-diffusion-3-medium-diffusers": "gated: accept its licence on the model page and "
        "`hf auth login` first",
    }
    hspace_stream = 1
    max_sequence_length = 256  # the pipeline's default T5 length

    def set_timesteps(self, scheduler, steps: int, **options) -> None:
        if scheduler.config.get("use_dynamic_shifting"):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            rows, cols = self.token_grid()
            c = scheduler.config
            options["mu"] = calculate_shift(rows * cols, c.get("base_image_seq_len", 256),
                                            c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                                            c.get("max_shift", 1.16))
        super().set_timesteps(scheduler, steps, **options)

    @torch.no_grad()
    def condition(self, prompts, negative_prompt: str, guidance_scale: float):
        guided = guidance_scale != 1.0
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.adapter.device,
            do_classifier_free_guidance=guided, negative_prompt=negative_prompt,
            max_sequence_length=self.max_sequence_length)
        context = Conditioning({"encoder_hidden_states": embeds, "pooled_projections": pooled})
        if not guided:
            return context
        return stacked(Conditioning({"encoder_hidden_states": negative, "pooled_projections": negative_pooled}),
                       context)

    def call(self, x: torch.Tensor, t, context) -> torch.Tensor:
        timestep = timestep_batch(t, len(x), x.device).float()
        return self.denoiser(hidden_states=x, timestep=timestep, return_dict=False, **context.kwargs())[0]
