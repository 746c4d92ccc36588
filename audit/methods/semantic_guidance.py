"""Semantic guidance toward allocated attributes, after Fair Diffusion (Friedrich et al., "Fair
Diffusion: Instructing Text-to-Image Generation Models on Fairness", 2023, arXiv 2302.10893),
which steers Stable Diffusion with SEGA (Brack et al., NeurIPS 2023).

Each image is given a class of the setting in the target's proportions (over the whole cell, as
prompt debiasing does) and, at every step after a warm-up, its noise prediction gets an edit
toward that class: the UNet's prediction for the prompt with the class's phrase appended minus
its prediction for the prompt alone, times `scale`, kept only where it is largest (per image and
channel, the elements above the `threshold` quantile of its magnitude, as SEGA does, so the edit
touches the attribute and leaves the rest of the image to the prompt). SEGA measures its edit
against the unconditional prediction; against the prompt's own, the edit carries the phrase
alone and not the prompt once more, which classifier-free guidance already adds; and the prompt's
prediction is the one classifier-free guidance has just made (BatchContext.conditional), so an
edited step costs one UNet evaluation per image beside guidance's two. Not here: SEGA's
momentum and Fair Diffusion's reverse edit away from the other classes (one more UNet evaluation
per class).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from audit.methods.base import AllocatingMethod, BatchContext, cross_attention_only
from audit.methods.guidance import AutoScale, Fraction, aim_vector, proportions

Quantile = Annotated[float, Field(ge=0, lt=1)]


class SemanticGuidance(AllocatingMethod):
    name = "semantic_guidance"
    title = "semantic guidance"
    text_only = True
    couples_batch = False  # each image's edit depends on its own class, prompt and x_t only
    supplied = ("phrases", "target")
    relative_cost = 1.5  # per edited step, the class's prediction beside classifier-free guidance's two
    # `scale: auto`: the edit scale is chosen per cell as the probe-guided methods' is, by trial
    # images judged by the suite's probe labeler (never the method's own signal, which is text).
    calibrates_scale = True
    ADDED_OPTIONS = ("aim",)  # see audit.registry.effective_params: earlier cells keep their ids

    def __init__(self, phrases: list[str], target, scale: AutoScale = 4.0, warmup: Fraction = 0.2,
                 stop: Fraction = 1.0, threshold: Quantile = 0.95, aim: list[float] | None = None):
        """phrases[k]: the text appended to the prompt for class k; target: the class shares;
        aim: the shares to allocate instead (set by the calibration where the edit misses)."""
        self.phrases, self.target = list(phrases), np.asarray(target, dtype=float)
        if len(self.phrases) != len(self.target):
            raise ValueError(f"need one phrase per class ({len(self.target)}), got {len(self.phrases)}")
        self.aim = aim_vector(self.target, aim)
        if not 0 <= warmup < stop <= 1:
            raise ValueError(f"need 0 <= warmup < stop <= 1, got warmup={warmup}, stop={stop}")
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be a quantile in [0, 1), got {threshold}")
        self.scale, self.warmup, self.stop, self.threshold = float(scale), float(warmup), float(stop), float(threshold)

    @classmethod
    def check_params(cls, values: dict) -> None:
        warmup, stop = values.get("warmup", 0.2), values.get("stop", 1.0)
        if not warmup < stop:
            raise ValueError(f"warmup must be below stop (fractions of the sampling loop), got warmup={warmup:g}, "
                             f"stop={stop:g}")
        if values.get("aim") is not None:
            proportions(values["aim"], len(values["aim"]), "aim", "the class shares to allocate")

    @classmethod
    def guided_by_probe_labeler(cls, values: dict) -> bool:
        return values.get("scale") == "auto"  # the calibration judges its trial images with it

    @property
    def shares(self) -> np.ndarray:
        return self.aim

    def not_applicable(self, adapter) -> str | None:
        return self.not_applicable_to(adapter.conditional) or cross_attention_only(self, adapter)

    def start_batch(self, batch: BatchContext) -> None:
        """The text contexts the edit compares: the prompt's (the batch's own) and the prompt with
        each image's allocated phrase."""
        super().start_batch(batch)
        classes = batch.state["allocated"].tolist()
        edited = [f"{p} {self.phrases[c]}".strip() for p, c in zip(batch.prompts, classes, strict=True)]
        batch.state["_edited"] = batch.adapter.encode_prompts(edited)
        batch.state["edited_steps"] = 0

    def active(self, batch: BatchContext) -> bool:
        return self.warmup <= batch.progress < self.stop

    def edit(self, x: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        """scale * (prediction with the allocated phrase - prediction for the prompt), kept where
        its magnitude reaches the threshold quantile of its image and channel."""
        model_in = batch.scheduler.scale_model_input(x, batch.t)
        with torch.no_grad():
            edited = batch.adapter.unet_output(model_in, batch.t, batch.state["_edited"], 1.0)
        direction = self.scale * (edited - batch.conditional)
        if self.threshold > 0:
            magnitude = direction.abs().flatten(2).float()
            cut = torch.quantile(magnitude, self.threshold, dim=2)
            direction = torch.where(direction.abs() >= cut[..., None, None].to(direction.dtype), direction,
                                    torch.zeros_like(direction))
        return direction

    def on_output(self, output: torch.Tensor, x: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        if not self.active(batch):
            return output
        batch.state["edited_steps"] += 1
        return output + self.edit(x, batch).to(output.dtype)

    def end_batch(self, batch: BatchContext) -> dict:
        batch.state.pop("_edited", None)
        return super().end_batch(batch)

    def config(self) -> dict:
        return {"name": self.name, "phrases": self.phrases, "target": self.target.tolist(), "aim": self.aim.tolist(),
                "scale": self.scale, "warmup": self.warmup, "stop": self.stop, "threshold": self.threshold}
