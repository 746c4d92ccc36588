"""Universal guidance (baseline, Bansal et al. 2023, forward guidance): a differentiable image
classifier judges the predicted x0; the gradient of each sample's cross-entropy to its allocated
class, taken w.r.t. x_t through the whole denoiser (and the VAE decoder of latent models), moves x_t.
It needs a full backward per step, so it is by far the most expensive method."""

from __future__ import annotations

import numpy as np
import torch

from audit.methods.base import AllocatingMethod, BatchContext
from audit.methods.guidance import DEFAULT_STOP, Fraction, Scale, check_window, displacement


class UniversalGuidance(AllocatingMethod):
    name = "universal_guidance"
    title = "universal guidance"
    relative_cost = 3.5  # a UNet forward and a full backward per guided step
    supplied = ("labeler", "attributes", "target")
    # A suite names the labeler (registry name; default: the suite's probe_labeler) and the
    # runner builds it with its labeler_options.
    suite_only = {"labeler": (str | None, None)}

    def __init__(self, labeler, attributes: list[str], target, scale: Scale = 1.0, start: Fraction = 0.0,
                 stop: Fraction = DEFAULT_STOP, normalize: bool = True):
        if not getattr(labeler, "differentiable", False):
            raise ValueError(f"universal guidance needs a differentiable labeler; {labeler.name} is not")
        self.labeler, self.attributes = labeler, list(attributes)
        self.target = np.asarray(target, dtype=float)
        self.scale, self.start, self.stop, self.normalize = float(scale), start, stop, normalize

    @classmethod
    def check_params(cls, values: dict) -> None:
        check_window(values)
        name = values["labeler"]
        if name is None:
            return
        from audit.registry import LABELERS, resolve

        if name not in LABELERS:
            raise ValueError(f"labeler {name!r} is not a labeler; allowed: {', '.join(sorted(LABELERS))}")
        factory = resolve(LABELERS, name, "labeler")
        if isinstance(factory, type) and not getattr(factory, "differentiable", False):
            usable = [n for n in sorted(LABELERS) if getattr(resolve(LABELERS, n, "labeler"), "differentiable", False)]
            raise ValueError(f"labeler {name!r} is not differentiable (universal guidance back-propagates through "
                             f"it); use one of: {', '.join(usable)}")

    @classmethod
    def labelers(cls, values: dict) -> list[str]:
        return [values["labeler"]] if values.get("labeler") else []

    @classmethod
    def guided_by_probe_labeler(cls, values: dict) -> bool:
        return values.get("labeler") is None  # its labeler defaults to the suite's probe_labeler

    def joint_logp(self, images01: torch.Tensor) -> torch.Tensor:
        logits = self.labeler.logits(images01)
        logp = logits[self.attributes[0]].log_softmax(-1)
        for a in self.attributes[1:]:
            logp = (logp[:, :, None] + logits[a].log_softmax(-1)[:, None, :]).flatten(1)
        return logp

    def on_x(self, x: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        if not (self.start <= batch.progress < self.stop) or self.scale <= 0:
            return x
        adapter, scheduler = batch.adapter, batch.scheduler
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            out = adapter.unet_output(adapter.model_input(scheduler, x_, batch.t), batch.t, batch.context,
                                      batch.guidance_scale)
            x0 = adapter.decode(adapter.predict_x0(scheduler, x_, batch.t, out)).clamp(-1, 1)
            loss = torch.nn.functional.nll_loss(self.joint_logp(x0 / 2 + 0.5), batch.state["allocated"])
            (g,) = torch.autograd.grad(loss, x_)
        step = displacement(g, x, self.scale, loss, self.normalize, batch.state)
        return x if step is None else (x - step).detach()

    def config(self) -> dict:
        return {"name": self.name, "labeler": self.labeler.name, "attributes": self.attributes,
                "target": self.target.tolist(), "scale": self.scale, "start": self.start, "stop": self.stop,
                "normalize": self.normalize}
