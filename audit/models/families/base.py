"""The interface every model family implements for ModelAdapter, which owns the denoising loop.

A family knows how its parts load from a diffusers directory, how prompts become the denoiser's
conditioning, how the denoiser is called at (x, t), where its h-space is, and how the sampled
latents become images. The adapter does the rest the same way for every family: per-image seeds,
classifier-free guidance, the method hooks, batch invariance, the h hook and decoding checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch


@dataclass
class Conditioning:
    """A transformer family's conditioning besides x and t: per-row tensors (rows = images; under
    classifier-free guidance the negative rows first, as diffusers stacks them) and tensors shared
    by every row (Flux's position ids). UNet families use the plain context tensor instead."""

    rows: dict[str, torch.Tensor]
    shared: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.rows.values())))

    def last(self, n: int) -> Conditioning:
        return Conditioning({k: v[-n:] for k, v in self.rows.items()}, self.shared)

    def twice(self) -> Conditioning:
        return Conditioning({k: torch.cat([v, v]) for k, v in self.rows.items()}, self.shared)

    def kwargs(self) -> dict:
        return {**self.rows, **self.shared}


def context_rows(context) -> int | None:
    return None if context is None else (context.shape[0] if torch.is_tensor(context) else len(context))


def last_rows(context, n: int):
    """The last n rows of a context (the conditional ones under classifier-free guidance)."""
    if context is None:
        return None
    return context[-n:] if torch.is_tensor(context) else context.last(n)


def twice(context):
    if context is None:
        return None
    return torch.cat([context] * 2) if torch.is_tensor(context) else context.twice()


def stacked(negative: Conditioning, positive: Conditioning) -> Conditioning:
    """Negative rows in front of positive ones (classifier-free guidance's batch)."""
    return Conditioning({k: torch.cat([negative.rows[k], v]) for k, v in positive.rows.items()}, positive.shared)


class Family:
    """Base of every family. A subclass states which pipelines it serves and overrides the steps
    that differ; the adapter is attached after construction (`attach`)."""

    name: ClassVar[str] = "family"
    pipelines: ClassVar[tuple[str, ...]] = ()  # model_index.json `_class_name` values it serves
    # Sampler when a suite names none: DDIM for the UNet families (the paper's sampler); None for
    # the transformer families, which sample with the scheduler they ship with (flow matching).
    default_scheduler: ClassVar[str | None] = "DDIMScheduler"
    # Hugging Face repositories of the family that `resolve_weights` names when they are missing:
    # repo -> what else the auditor needs to know to get them.
    downloads: ClassVar[dict[str, str]] = {}
    # Which element of a tuple output of the hooked block is the image stream.
    hspace_stream: ClassVar[int] = 0
    # Whether a text-conditioned model reads one text-context tensor (a UNet's cross-attention
    # input), which methods that edit the text context can change; transformer families condition
    # through several encoders' outputs at once (Conditioning).
    single_text_context: ClassVar[bool] = True

    adapter: Any = None

    def attach(self, adapter) -> Family:
        self.adapter = adapter
        return self

    @classmethod
    def matches(cls, index: dict) -> bool:
        return index.get("_class_name") in cls.pipelines

    @classmethod
    def load(cls, path: Path, index: dict, device: str, dtype: torch.dtype, variant: str | None,
             use_safetensors: bool | None) -> dict:
        """ModelAdapter keyword arguments for the model saved at `path`."""
        raise NotImplementedError

    # -- parts ---------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.adapter.unet

    @property
    def conditional(self) -> bool:
        return self.adapter.text_encoder is not None

    def modules(self) -> list[torch.nn.Module | None]:
        """Every network the family runs (made batch-invariant on CPU)."""
        a = self.adapter
        return [a.unet, a.text_encoder, a.text_encoder_2, a.vae]

    def info(self) -> dict:
        return {"family": self.name}

    # -- sampling ------------------------------------------------------------------------------
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one image's initial noise, as the family's pipeline draws it."""
        raise NotImplementedError

    def pack(self, noise: torch.Tensor) -> torch.Tensor:
        """The denoiser's layout of a batch of noise (identity except for Flux's packed tokens)."""
        return noise

    def set_timesteps(self, scheduler, steps: int) -> None:
        scheduler.set_timesteps(steps)

    def condition(self, prompts: list[str], negative_prompt: str, guidance_scale: float):
        """The context of a batch: rows for `prompts`, with the negative prompt's rows stacked in
        front when classifier-free guidance applies. None for unconditional models."""
        return None

    def encode_prompts(self, prompts: list[str]):
        """The conditional context of `prompts` alone."""
        return self.condition(prompts, "", 1.0)

    def call(self, x: torch.Tensor, t, context) -> torch.Tensor:
        """The denoiser's prediction for x at t; `context` has as many rows as x."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (not clamped) from sampled x; differentiable (universal guidance)."""
        return x

    def predict_x0(self, scheduler, x: torch.Tensor, t, output: torch.Tensor) -> torch.Tensor:
        """x0 implied by the model output: under the scheduler's prediction type, or for a
        flow-matching scheduler (no alphas) x - sigma * v with sigma = t / num_train_timesteps."""
        if not hasattr(scheduler, "alphas_cumprod"):
            sigma = float(t) / scheduler.config.num_train_timesteps
            return x - sigma * output
        a = scheduler.alphas_cumprod.to(x.device)[int(t)].to(x.dtype)
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            return (x - (1 - a).sqrt() * output) / a.sqrt()
        if kind == "v_prediction":
            return a.sqrt() * x - (1 - a).sqrt() * output
        return output

    # -- h-space -------------------------------------------------------------------------------
    def hspace_default(self) -> str:
        """Module path of h when the model names none."""
        return "mid_block"

    def token_grid(self) -> tuple[int, int] | None:
        """(rows, columns) of the image tokens of a transformer's h; None for a UNet's [C, h, w]."""
        return None


def timestep_batch(t, n: int, device) -> torch.Tensor:
    """t (an int, a float or a 0-d tensor from the scheduler) as one value per row, in the dtype
    the family's pipeline passes (float32 for flow matching, int64 for discrete timesteps)."""
    return torch.as_tensor(t, device=device).reshape(()).expand(n)
