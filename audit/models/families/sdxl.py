"""SDXL: two text encoders (their penultimate states side by side as the context), encoder 2's
projected pooled output and the size/crop conditions reach the UNet as `added_cond_kwargs`,
injected by a pre-hook so every UNet call gets them, including the guidance methods' encoder-only
passes; an empty negative prompt is zeros when the pipeline sets force_zeros_for_empty_prompt."""

from __future__ import annotations

from pathlib import Path

import torch

from audit.models.families.sd import SDFamily


class SDXLFamily(SDFamily):
    name = "sdxl"
    pipelines = ("StableDiffusionXLPipeline",)
    downloads = {"stabilityai/stable-diffusion-xl-base-1.0": "about 7 GB with `--include '*.fp16.safetensors' "
                 "'*.json' '*.txt'` and variant: fp16"}

    _added: dict | None = None
    _hooked = False

    @classmethod
    def matches(cls, index: dict) -> bool:
        return "unet" in index and (index.get("text_encoder_2") or [None])[0] is not None

    @classmethod
    def load(cls, path: Path, index: dict, device: str, dtype: torch.dtype, variant: str | None,
             use_safetensors: bool | None) -> dict:
        if (index.get("text_encoder") or [None])[0] is None:
            raise ValueError(f"{path}: a pipeline with only text_encoder_2 (an SDXL refiner) is not supported; "
                             "use a base model")
        return super().load(path, index, device, dtype, variant, use_safetensors)

    def attach(self, adapter) -> SDXLFamily:
        super().attach(adapter)
        if not self._hooked:
            adapter.unet.register_forward_pre_hook(self._add_conditions, with_kwargs=True)
            self._hooked = True
        return self

    @torch.no_grad()
    def text_embeddings(self, prompts) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both encoders' penultimate hidden states side by side, and encoder 2's projected pooled output."""
        a = self.adapter
        first = a.text_encoder(self.tokens(a.tokenizer, prompts), output_hidden_states=True)
        second = a.text_encoder_2(self.tokens(a.tokenizer_2, prompts), output_hidden_states=True)
        return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds

    def start(self, pooled: torch.Tensor | None) -> None:
        self._added = None if pooled is None else self.size_conditions(pooled)

    def size_conditions(self, pooled: torch.Tensor) -> dict:
        """The pooled text embedding and (original size, crop, target size)."""
        size = self.denoiser.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        vae = self.adapter.vae
        scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        ids = torch.tensor([height * scale, width * scale, 0, 0, height * scale, width * scale], dtype=pooled.dtype)
        return {"text_embeds": pooled, "time_ids": ids.to(pooled.device).repeat(len(pooled), 1)}

    def _add_conditions(self, module, args, kwargs):
        """UNet pre-hook: give a call the batch's added conditions (the last rows when the call
        carries only the conditional half, as the guidance methods' encoder passes do)."""
        if kwargs.get("added_cond_kwargs") is not None or self._added is None:
            return None
        n = (args[0] if args else kwargs["sample"]).shape[0]
        # (a lone sample's call carries a copy of it: see ModelAdapter.unet_output)
        kwargs["added_cond_kwargs"] = {k: v[-n:] if len(v) >= n else torch.cat([v] * n) for k, v in self._added.items()}
        return args, kwargs
