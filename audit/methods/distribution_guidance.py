"""Distribution guidance ("Balancing Act", Parihar et al., CVPR 2024), generalised.

At each step the batch's attribute distribution is predicted from h by per-timestep probes;
a chi-square (or KL) loss to the target is differentiated and the batch is moved against the
gradient. Beyond the paper: K-class attributes, several attributes with a joint target over
their product space, any target, normalised gradients, start/stop fractions, an explosion
guard, and two gradient paths: `h` (edit h at the middle block, as the paper; only the linear
probe is differentiated) and `x` (differentiate through the encoder half and move x_t; costs
one partial backward per step but also steers UNets whose skip connections bypass h). With
`push="surplus"` the gradient moves only samples in classes the batch has too much of (see
audit.methods.guidance.surplus_weights). With `push="assign"` the batch is split, at every step,
into the target's counts (see audit.methods.guidance.assign_classes): a random subset of each
class the batch has too much of is sent to the classes it lacks, everyone else stays, and each
sample is pushed (cross-entropy) toward its class, as sample guidance does but moving only the
batch's surplus. Why: the batch loss pushes hardest on the samples nearest the boundary and stops
once the mean matches, so it moves borderline samples and leaves them just across, which under
stochastic DDIM cost FID-to-target (skin tone uniform, 1,000 samples: 5.66 against 4.17 with
"assign", benchmarks/efficacy.yaml). With `push="assign_once"` the split is made at the first
guided step and kept: on targets over several classes the per-step split churns (skin tone x
eyeglasses, 64 seeds at scale 4: 40 samples changed class at least once, some in the last guided
steps), sending samples one way and then another, which cost image quality (1,000 samples at scale
4: FID to target 7.17 re-split at every step, 5.40 split once; sample guidance 4.93). The default
`"all"` is the paper's.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

from audit.methods.base import BatchContext, Method, allocate
from audit.methods.guidance import (
    DEFAULT_STOP,
    LOSSES,
    AutoScale,
    Fraction,
    GradientPath,
    GradTau,
    Loss,
    ProbeGuidance,
    Tolerance,
    aim_vector,
    assign_classes,
    batch_distribution_loss,
    per_sample_loss,
    probe_space_target,
    proportions,
    tolerance_value,
)
from audit.probes.probe import Probe, joint_probs

Push = Literal["all", "surplus", "assign", "assign_once"]
PUSHES = get_args(Push)


class DistributionGuidance(ProbeGuidance, Method):
    name = "distribution_guidance"
    title = "distribution guidance"
    ADDED_OPTIONS = ("push", "auto_tolerance")  # see audit.registry.effective_params

    def __init__(self, probes: list[Probe], target: np.ndarray | list[float], scale: AutoScale = 1.0,
                 loss: Loss = "chi2", path: GradientPath = "h", start: Fraction = 0.0, stop: Fraction = DEFAULT_STOP,
                 normalize: bool = True, grad_tau: GradTau = 8.0, correct_confusion: bool = True,
                 aim: list[float] | None = None, push: Push = "all", auto_tolerance: Tolerance = 0.0):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if path not in ("h", "x"):
            raise ValueError(f"path must be 'h' or 'x', got {path!r}")
        k = int(np.prod([len(p.classes) for p in probes]))
        target = proportions(target, k, "target", f"the product space of {[p.attribute for p in probes]}")
        if not 0 <= start < stop <= 1:
            raise ValueError(f"need 0 <= start < stop <= 1, got start={start}, stop={stop}")
        self.probes, self.target = probes, torch.tensor(target, dtype=torch.float32)
        self.aim = aim_vector(target, aim)
        self.scale, self.loss, self.path = float(scale), loss, path
        self.start, self.stop, self.normalize = start, stop, normalize
        if grad_tau < 1:
            raise ValueError(f"grad_tau must be >= 1 (1 = the calibrated probabilities), got {grad_tau}")
        self.grad_tau = float(grad_tau)
        self.correct_confusion = bool(correct_confusion)
        if push not in PUSHES:
            raise ValueError(f"push must be one of {list(PUSHES)}, got {push!r}")
        self.push = push
        self.auto_tolerance = tolerance_value(auto_tolerance)  # read by the calibration only
        self._allocation: dict[int, int] = {}

    def start_cell(self, seeds: list[int]) -> None:
        """The class counts `push="assign"` fills, fixed over the whole cell (as sample
        guidance's allocation) so that a batch of 64 toward 0.1/0.9 does not round to 6/58 in
        every batch; which sample fills which count is decided at every step."""
        self._allocation = dict(zip((int(s) for s in seeds), allocate(self.aim, list(seeds)).tolist(), strict=True))

    def cell_choices(self, seeds: list[int]) -> list | None:
        """The allocation, which only the assigning pushes use."""
        if self.push not in ("assign", "assign_once"):
            return None
        return [self._allocation[int(s)] for s in seeds]

    def batch_counts(self, seeds: list[int]) -> np.ndarray:
        if all(int(s) in self._allocation for s in seeds):
            labels = np.asarray([self._allocation[int(s)] for s in seeds])
        else:
            labels = allocate(self.aim, list(seeds))
        return np.bincount(labels, minlength=len(self.aim))

    def probe_target(self, t) -> torch.Tensor:
        """Where the probes' batch mean must go at step t for the final labels to match the
        target. Without the correction, a soft probe's mean reads 0.60/0.40 on a batch whose
        images are 0.51/0.49 (zoo DDPM, skin tone): aiming it at 0.5/0.5 overshoots unless the
        scale is tuned to stop short, and a 4-class target (hair colour) is missed in three
        directions that no single scale can fix. The aim (see aim_vector) replaces the target
        when the calibration corrected it."""
        aim = torch.tensor(self.aim, dtype=torch.float32, device=self.probes[0].confusion.device)
        return probe_space_target(self.probes, t, aim) if self.correct_confusion else aim

    def probe_loss(self, h: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        if self.push in ("assign", "assign_once"):
            return self.assigned_loss(h, batch)
        target = self.probe_target(batch.t)
        loss, p_hat = batch_distribution_loss(self.probes, h, batch.t, target, self.loss, self.grad_tau,
                                                 self.push)
        batch.state.setdefault("loss", []).append(round(float(loss.detach()), 6))
        batch.state["p_hat_probe"] = [round(float(v), 4) for v in p_hat.detach()]
        batch.state["probe_target"] = [round(float(v), 4) for v in target]
        return loss

    def assigned_loss(self, h: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        """Cross-entropy of each sample to the class the batch's assignment gives it now (with
        `assign_once`, the one it gave at the batch's first guided step)."""
        probs = joint_probs(self.probes, h, batch.t)
        if "priority" not in batch.state:  # which samples move: a draw of each seed's, whatever its batch
            batch.state["priority"] = [float(np.random.default_rng([int(s), 7]).random()) for s in batch.seeds]
        if self.push == "assign_once" and "assigned" in batch.state:
            labels = torch.tensor(batch.state["assigned"], dtype=torch.long, device=h.device)
        else:
            labels = assign_classes(probs, self.batch_counts(batch.seeds), batch.state["priority"])
        loss = per_sample_loss(self.probes, h, batch.t, labels)
        batch.state.setdefault("loss", []).append(round(float(loss.detach()), 6))
        batch.state["p_hat_probe"] = [round(float(v), 4) for v in probs.detach().mean(0)]
        batch.state["assigned"] = labels.tolist()
        return loss

    def config(self) -> dict:
        return {"name": self.name, "attributes": [p.attribute for p in self.probes],
                "target": self.target.tolist(), "aim": self.aim.tolist(), "scale": self.scale, "loss": self.loss,
                "path": self.path,
                "start": self.start, "stop": self.stop, "normalize": self.normalize, "grad_tau": self.grad_tau,
                "correct_confusion": self.correct_confusion, "push": self.push,
                "auto_tolerance": self.auto_tolerance, "probes": [p.meta for p in self.probes]}
