"""Sample guidance (the paper's baseline): every sample gets its own target class, allocated so
the batch matches the target, and is pushed toward it by the probe's cross-entropy. Unlike
distribution guidance it also pushes samples that already belong to the majority class, which
costs image quality."""

from __future__ import annotations

import numpy as np
import torch

from audit.methods.base import AllocatingMethod, BatchContext
from audit.methods.guidance import displacement, encode_h, per_sample_loss
from audit.probes.probe import Probe


class SampleGuidance(AllocatingMethod):
    name = "sample_guidance"
    needs_probe = True

    def __init__(self, probes: list[Probe], target, scale: float = 1.0, path: str = "h",
                 start: float = 0.0, stop: float = 1.0, normalize: bool = True):
        if path not in ("h", "x"):
            raise ValueError(f"path must be 'h' or 'x', got {path!r}")
        self.probes, self.target = probes, np.asarray(target, dtype=float)
        self.scale, self.path, self.normalize = float(scale), path, normalize
        self.start, self.stop = start, stop

    @property
    def edits_h(self) -> bool:
        return self.path == "h"

    def active(self, batch: BatchContext) -> bool:
        return self.start <= batch.progress < self.stop and self.scale > 0

    def on_h(self, h: torch.Tensor, batch: BatchContext) -> torch.Tensor | None:
        if self.path != "h" or not self.active(batch):
            return None
        with torch.enable_grad():
            h_ = h.detach().float().requires_grad_(True)
            loss = per_sample_loss(self.probes, h_, batch.t, batch.state["allocated"])
            (g,) = torch.autograd.grad(loss, h_)
        step = displacement(g, h, self.scale, loss, self.normalize, batch.state)
        return None if step is None else h - step

    def on_x(self, x: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        if self.path != "x" or not self.active(batch):
            return x
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            loss = per_sample_loss(self.probes, encode_h(batch, x_), batch.t, batch.state["allocated"])
            (g,) = torch.autograd.grad(loss, x_)
        step = displacement(g, x, self.scale, loss, self.normalize, batch.state)
        return x if step is None else (x - step).detach()

    def config(self) -> dict:
        return {"name": self.name, "attributes": [p.attribute for p in self.probes],
                "target": self.target.tolist(), "scale": self.scale, "path": self.path,
                "start": self.start, "stop": self.stop, "normalize": self.normalize,
                "probes": [p.meta for p in self.probes]}
