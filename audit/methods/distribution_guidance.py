"""Distribution guidance ("Balancing Act", Parihar et al., CVPR 2024), generalised.

At each step the batch's attribute distribution is predicted from h by per-timestep probes;
a chi-square (or KL) loss to the target is differentiated and the batch is moved against the
gradient. Beyond the paper: K-class attributes, several attributes with a joint target over
their product space, any target, normalised gradients, start/stop fractions, an explosion
guard, and two gradient paths: `h` (edit h at the middle block, as the paper; only the linear
probe is differentiated) and `x` (differentiate through the encoder half and move x_t; costs
one partial backward per step but also steers UNets whose skip connections bypass h).
"""

from __future__ import annotations

import numpy as np
import torch

from audit.methods.base import BatchContext, Method
from audit.methods.guidance import LOSSES, batch_distribution_loss, displacement, encode_h
from audit.probes.probe import Probe


class DistributionGuidance(Method):
    name = "distribution_guidance"
    needs_probe = True

    def __init__(self, probes: list[Probe], target: np.ndarray | list[float], scale: float = 1.0,
                 loss: str = "chi2", path: str = "h", start: float = 0.0, stop: float = 1.0,
                 normalize: bool = True):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if path not in ("h", "x"):
            raise ValueError(f"path must be 'h' or 'x', got {path!r}")
        k = int(np.prod([len(p.classes) for p in probes]))
        target = np.asarray(target, dtype=float)
        if target.shape != (k,) or abs(target.sum() - 1) > 1e-6 or target.min() < 0:
            raise ValueError(f"target must be {k} non-negative proportions summing to 1 "
                             f"(the product space of {[p.attribute for p in probes]}), got {target.tolist()}")
        if not 0 <= start < stop <= 1:
            raise ValueError(f"need 0 <= start < stop <= 1, got start={start}, stop={stop}")
        self.probes, self.target = probes, torch.tensor(target, dtype=torch.float32)
        self.scale, self.loss, self.path = float(scale), loss, path
        self.start, self.stop, self.normalize = start, stop, normalize

    @property
    def edits_h(self) -> bool:
        return self.path == "h"

    def active(self, batch: BatchContext) -> bool:
        return self.start <= batch.progress < self.stop and self.scale > 0

    def _record(self, batch: BatchContext, loss: torch.Tensor, p_hat: torch.Tensor) -> None:
        batch.state.setdefault("loss", []).append(round(float(loss.detach()), 6))
        batch.state["p_hat_probe"] = [round(float(v), 4) for v in p_hat.detach()]

    def on_h(self, h: torch.Tensor, batch: BatchContext) -> torch.Tensor | None:
        if self.path != "h" or not self.active(batch):
            return None
        with torch.enable_grad():
            h_ = h.detach().float().requires_grad_(True)
            loss, p_hat = batch_distribution_loss(self.probes, h_, batch.t, self.target, self.loss)
            (g,) = torch.autograd.grad(loss, h_)
        self._record(batch, loss, p_hat)
        step = displacement(g, h, self.scale, loss, self.normalize, batch.state)
        return None if step is None else h - step

    def on_x(self, x: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        if self.path != "x" or not self.active(batch):
            return x
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            h = encode_h(batch, x_)
            loss, p_hat = batch_distribution_loss(self.probes, h, batch.t, self.target, self.loss)
            (g,) = torch.autograd.grad(loss, x_)
        self._record(batch, loss, p_hat)
        step = displacement(g, x, self.scale, loss, self.normalize, batch.state)
        return x if step is None else (x - step).detach()

    def config(self) -> dict:
        return {"name": self.name, "attributes": [p.attribute for p in self.probes],
                "target": self.target.tolist(), "scale": self.scale, "loss": self.loss, "path": self.path,
                "start": self.start, "stop": self.stop, "normalize": self.normalize,
                "probes": [p.meta for p in self.probes]}
