"""Sample guidance (the paper's baseline): every sample gets its own target class, allocated so
the batch matches the target, and is pushed toward it by the probe's cross-entropy. Unlike
distribution guidance it also pushes samples that already belong to the majority class, which
costs image quality."""

from __future__ import annotations

import numpy as np
import torch

from audit.methods.base import AllocatingMethod, BatchContext
from audit.methods.guidance import (
    DEFAULT_STOP,
    AutoScale,
    Fraction,
    GradientPath,
    ProbeGuidance,
    Tolerance,
    aim_vector,
    per_sample_loss,
    tolerance_value,
)
from audit.probes.probe import Probe


class SampleGuidance(ProbeGuidance, AllocatingMethod):
    name = "sample_guidance"
    title = "sample guidance"
    ADDED_OPTIONS = ("auto_tolerance",)  # see audit.registry.effective_params

    def __init__(self, probes: list[Probe], target, scale: AutoScale = 1.0, path: GradientPath = "h",
                 start: Fraction = 0.0, stop: Fraction = DEFAULT_STOP, normalize: bool = True,
                 aim: list[float] | None = None, auto_tolerance: Tolerance = 0.0):
        if path not in ("h", "x"):
            raise ValueError(f"path must be 'h' or 'x', got {path!r}")
        self.probes, self.target = probes, np.asarray(target, dtype=float)
        self.aim = aim_vector(self.target, aim)
        self.scale, self.path, self.normalize = float(scale), path, normalize
        self.start, self.stop = start, stop
        self.auto_tolerance = tolerance_value(auto_tolerance)  # read by the calibration only

    @property
    def shares(self) -> np.ndarray:
        return self.aim

    def probe_loss(self, h: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        return per_sample_loss(self.probes, h, batch.t, batch.state["allocated"])

    def config(self) -> dict:
        return {"name": self.name, "attributes": [p.attribute for p in self.probes],
                "target": self.target.tolist(), "aim": self.aim.tolist(), "scale": self.scale, "path": self.path,
                "start": self.start, "stop": self.stop, "normalize": self.normalize,
                "auto_tolerance": self.auto_tolerance, "probes": [p.meta for p in self.probes]}
