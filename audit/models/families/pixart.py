"""PixArt-Sigma: PixArtTransformer2DModel (DiT) on VAE latents, conditioned on T5's states with
their attention mask, classifier-free guidance; sampled with the scheduler it ships with
(DPM-Solver++). Its learned-variance half of the output is dropped as the pipeline does. No
resolution binning: the model samples at its own sample_size (the pipeline's binning table
only knows the released sizes). h: the image tokens of the middle block (`transformer_blocks.N`)."""

from __future__ import annotations

import torch

from audit.models.families.base import Conditioning, stacked, timestep_batch
from audit.models.families.transformer import TransformerFamily

# PixArt's transformer takes these, and the Sigma pipeline always passes them empty.
NO_RESOLUTION = {"resolution": None, "aspect_ratio": None}


class PixArtFamily(TransformerFamily):
    name = "pixart"
    pipelines = ("PixArtSigmaPipeline",)
    pipeline_class = "PixArtSigmaPipeline"
    downloads = {
        "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": "about 22 GB with the T5-XXL encoder (dtype: float16 halves the "
        "memory)",
    }
    max_sequence_length = 300  # the pipeline's default T5 length

    @torch.no_grad()
    def condition(self, prompts, negative_prompt: str, guidance_scale: float):
        guided = guidance_scale != 1.0
        embeds, mask, negative, negative_mask = self.pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=guided, negative_prompt=negative_prompt,
            device=self.adapter.device, clean_caption=False, max_sequence_length=self.max_sequence_length)
        context = Conditioning({"encoder_hidden_states": embeds, "encoder_attention_mask": mask})
        if not guided:
            return context
        return stacked(Conditioning({"encoder_hidden_states": negative, "encoder_attention_mask": negative_mask}),
                       context)

    def call(self, x: torch.Tensor, t, context) -> torch.Tensor:
        out = self.denoiser(x, timestep=timestep_batch(t, len(x), x.device), added_cond_kwargs=NO_RESOLUTION,
                            return_dict=False, **context.kwargs())[0]
        if self.denoiser.config.out_channels // 2 == self.denoiser.config.in_channels:
            out = out.chunk(2, dim=1)[0]  # the learned variance
        return out

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.decode(x.to(vae.dtype) / vae.config.scaling_factor).sample
