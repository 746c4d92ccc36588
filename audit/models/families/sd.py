"""Stable Diffusion 1.x/2.x: UNet2DConditionModel on VAE latents, one CLIP text encoder whose last
hidden states are the cross-attention context, classifier-free guidance."""

from __future__ import annotations

from pathlib import Path

import torch

from audit.models.families.unet2d import UNet2DFamily


class SDFamily(UNet2DFamily):
    name = "sd"
    pipelines = ("StableDiffusionPipeline",)
    downloads = {"stable-diffusion-v1-5/stable-diffusion-v1-5": "about 5 GB with `--include '*.fp16.safetensors' "
                 "'*.json' '*.txt'` and variant: fp16"}

    @classmethod
    def matches(cls, index: dict) -> bool:
        return "unet" in index and (index.get("text_encoder") or [None])[0] is not None

    @classmethod
    def load(cls, path: Path, index: dict, device: str, dtype: torch.dtype, variant: str | None,
             use_safetensors: bool | None) -> dict:
        import transformers

        parts = super().load(path, index, device, dtype, variant, use_safetensors)
        for name in ("text_encoder", "text_encoder_2"):
            if (index.get(name) or [None])[0] is None:
                continue
            encoder_cls = getattr(transformers, index[name][1])
            parts[name] = encoder_cls.from_pretrained(path / name, torch_dtype=dtype, variant=variant,
                                                      use_safetensors=use_safetensors).to(device).eval()
            tokenizer = name.replace("text_encoder", "tokenizer")
            parts[tokenizer] = getattr(transformers, index[tokenizer][1]).from_pretrained(path / tokenizer)
        parts["zero_empty_negative"] = bool(index.get("force_zeros_for_empty_prompt", False))
        return parts

    def tokens(self, tokenizer, prompts) -> torch.Tensor:
        return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(self.adapter.device)

    @torch.no_grad()
    def text_embeddings(self, prompts) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context for cross-attention, pooled embedding or None)."""
        a = self.adapter
        return a.text_encoder(self.tokens(a.tokenizer, prompts))[0], None

    def negative_embeddings(self, negative_prompt: str, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, pooled = self.text_embeddings([negative_prompt] * n)
        if self.adapter.zero_empty_negative and not negative_prompt:
            return torch.zeros_like(context), None if pooled is None else torch.zeros_like(pooled)
        return context, pooled

    def condition(self, prompts, negative_prompt: str, guidance_scale: float):
        context, pooled = self.text_embeddings(prompts)
        if guidance_scale != 1.0:
            negative, negative_pooled = self.negative_embeddings(negative_prompt, len(prompts))
            context = torch.cat([negative, context])
            pooled = None if pooled is None else torch.cat([negative_pooled, pooled])
        self.start(pooled)
        return context

    def encode_prompts(self, prompts):
        return self.text_embeddings(prompts)[0]

    def start(self, pooled: torch.Tensor | None) -> None:
        """Per-batch state besides the context (SDXL's added conditions)."""

    def call(self, x: torch.Tensor, t, context) -> torch.Tensor:
        if context is None:
            return self.denoiser(x, t).sample
        return self.denoiser(x, t, encoder_hidden_states=context).sample
