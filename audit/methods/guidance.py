"""Shared machinery of the gradient-guidance methods: losses on a batch's predicted attribute
distribution, scale normalisation, the explosion guard, and the two gradient paths.

Scale semantics (`normalize=True`, the default): each step is a Polyak step,
`scale * loss * g / ||g||^2`, g being the gradient of the batch loss w.r.t. the whole guided
tensor (h or x_t). To first order it removes the fraction `scale` of the current loss, whatever
the batch size, model width, timestep or probe sensitivity; so one scale transfers across them,
the loss (not a per-sample normaliser) still decides which samples move, and the step shrinks
as the batch nears its target. `normalize=False` gives the paper's raw `scale * g`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from scipy.optimize import linear_sum_assignment

from audit.probes.probe import Probe, joint_confusion, joint_log_probs, joint_probs

MAX_DISPLACEMENT = 3.0  # per-sample step cap, in units of the tensor's rms (the guard)
# Guidance acts on the first 80% of the steps by default: the last steps draw details, not
# attributes. On the step-8,000 zoo DDPM (skin tone to uniform, 1,000 samples, calibrated scale) guiding
# every step cost FID-to-target 3.73 vs 3.18 unguided; stopping at 0.8 gave 3.18 at FD 0.020.
# Toward a skewed target (0.1/0.9) stopping early needed a larger scale and cost more FID
# (15.2 vs 10.9): pass stop=1.0 there.
DEFAULT_STOP = 0.8


def chi_square_loss(p_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_c (p_hat_c - pi_c)^2 / pi_c, the paper's default distribution loss."""
    return ((p_hat - target) ** 2 / target.clamp(min=1e-3)).sum()


def kl_loss(p_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(p_hat || pi) with smoothing, so zero-target classes repel instead of exploding."""
    p = (p_hat + 1e-4) / (1 + 1e-4 * len(p_hat))
    q = (target + 1e-3) / (1 + 1e-3 * len(target))
    return (p * (p / q).log()).sum()


LOSSES = {"chi2": chi_square_loss, "kl": kl_loss}

# What a suite may write for the guidance methods' params (checked when the suite loads, see
# audit.methods.base.Method.supplied). A scale of 0 or below would run the cell unguided (or
# pushed away from the target) under the method's name.
Scale = Annotated[float, Field(gt=0, allow_inf_nan=False)]
AutoScale = Scale | Literal["auto"]  # "auto": the runner calibrates it before building the method
Fraction = Annotated[float, Field(ge=0, le=1)]  # of the sampling loop (start, stop)
GradientPath = Literal["h", "x"]
Loss = Literal["chi2", "kl"]  # the keys of LOSSES
GradTau = Annotated[float, Field(ge=1, allow_inf_nan=False)]
Tolerance = Annotated[float, Field(ge=0, le=4)]  # auto_tolerance, see tolerance_value


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.float().pow(2).mean().sqrt()


def displacement(g: torch.Tensor, ref: torch.Tensor, scale: float, loss: torch.Tensor,
                 normalize: bool, state: dict) -> torch.Tensor | None:
    """The step to subtract from `ref`, or None (recorded in state) when the gradient is not
    finite; per-sample steps larger than MAX_DISPLACEMENT * rms(ref) are clipped."""
    loss = loss.detach().float()
    if not torch.isfinite(g).all() or not torch.isfinite(loss):
        state["skipped_nonfinite"] = state.get("skipped_nonfinite", 0) + 1
        return None
    if normalize:
        step = scale * loss.clamp(min=0) * g / (g.float().pow(2).sum() + 1e-20)
    else:
        step = scale * g
    limit = MAX_DISPLACEMENT * rms(ref)
    per_sample = step.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12)
    factor = (limit / per_sample).clamp(max=1.0)
    clipped = int((factor < 1).sum())
    if clipped:
        state["clipped_steps"] = state.get("clipped_steps", 0) + clipped
    return (step * factor.view(-1, *[1] * (step.dim() - 1))).to(ref.dtype)


def probe_space_target(probes: list[Probe], t: int, target: torch.Tensor) -> torch.Tensor:
    """The probes' batch mean to aim for at step t so that the final labels follow `target`:
    M^T target, M the probes' joint confusion at t (see audit.probes.probe)."""
    return joint_confusion(probes, t).T @ target


def batch_distribution_loss(probes: list[Probe], h: torch.Tensor, t: int, target: torch.Tensor,
                            loss: str, grad_tau: float = 1.0, push: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, p_hat) of the batch's probe-predicted joint distribution against the target
    (already in probe space, see probe_space_target).

    The value always uses the calibrated probabilities; with grad_tau > 1 the gradient flows
    through probabilities softened by grad_tau (straight-through). A calibrated softmax's
    gradient vanishes on confident samples, so only the few near the boundary would be pushed;
    softening spreads the push over the batch, as the paper's tau=8 did, without letting the
    softened probabilities misjudge the batch."""
    probs = joint_probs(probes, h, t)
    p_hat = probs.mean(0)
    if grad_tau != 1.0 or push == "surplus":
        soft = joint_probs(probes, h, t, tau=grad_tau) if grad_tau != 1.0 else probs
        if push == "surplus":
            soft = soft * surplus_weights(probs.detach(), p_hat.detach(), target)[:, None]
        soft = soft.mean(0)
        p_hat = p_hat.detach() + soft - soft.detach()
    return LOSSES[loss](p_hat, target), p_hat


def surplus_weights(probs: torch.Tensor, p_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each sample's probability of belonging to a class the batch has too much of. Weighting
    the gradient by it moves the samples that must change class and leaves those already in a
    class the batch lacks alone (they would only be pushed deeper into it, at a cost in image
    quality); the batch loss still decides where they go and how far."""
    surplus = (p_hat > target).float()
    return (probs * surplus).sum(1)


def assign_classes(probs: torch.Tensor, counts: np.ndarray, priority: np.ndarray) -> torch.Tensor:
    """Each sample's class under a batch-level assignment that fills class c with exactly
    counts[c] samples while the fewest samples leave the class they lean to (their most likely
    one). Within a class in surplus, the samples that leave are those of lowest `priority`, not
    those nearest the boundary: with a random priority a random subset moves, so neither the
    class left behind nor the class filled is skewed toward borderline samples. A moving sample
    goes to the class it finds most likely among those with room (a linear assignment over
    per-class slots)."""
    logp = probs.detach().double().clamp(min=1e-12).log().cpu().numpy()
    leaves = logp.argmax(1)[:, None] != np.arange(logp.shape[1])[None, :]
    cost = leaves * (1 + 1e-3 * np.asarray(priority, dtype=float)[:, None]) - 1e-6 * logp
    slots = np.repeat(np.arange(len(counts)), counts)
    rows, cols = linear_sum_assignment(cost[:, slots])
    labels = np.empty(len(probs), dtype=np.int64)
    labels[rows] = slots[cols]
    return torch.from_numpy(labels).to(probs.device)


def per_sample_loss(probes: list[Probe], h: torch.Tensor, t: int, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each sample's joint probe prediction to its allocated class."""
    return torch.nn.functional.nll_loss(joint_log_probs(probes, h, t), labels)


def encode_h(batch, x: torch.Tensor) -> torch.Tensor:
    """h of x_t through the denoiser up to h only (differentiable); under CFG, the conditional h."""
    adapter = batch.adapter
    return adapter.encode_h(adapter.model_input(batch.scheduler, x, batch.t), batch.t, batch.context)


def aim_vector(target: np.ndarray, aim) -> np.ndarray:
    """The label distribution guidance aims at: the target itself, or (`aim`, set by the scale
    calibration) a corrected one that makes the final images land on the target where the probes
    misjudge guided samples in one direction (joint skin tone x eyeglasses: samples guided to
    dark skin without glasses read light to the skin probe, so aiming at the target itself left
    0.19 light+no vs 0.35 dark+no)."""
    if aim is None:
        return np.asarray(target, dtype=float)
    return proportions(aim, len(target), "aim", "like the target")


def proportions(values, k: int, name: str, meaning: str) -> np.ndarray:
    """`values` as k non-negative proportions summing to 1, or a ValueError that says so."""
    values = np.asarray(values, dtype=float)
    if values.shape != (k,) or abs(values.sum() - 1) > 1e-6 or values.min() < 0:
        raise ValueError(f"{name} must be {k} non-negative proportions summing to 1 ({meaning}), "
                         f"got {values.tolist()}")
    return values


def tolerance_value(value) -> float:
    """`auto_tolerance` (see audit.run.calibration.smallest_scale_within) as a float, or a
    ValueError that says what it may be."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 4:
        raise ValueError(f"auto_tolerance must be a number from 0 to 4 (FD sampling-noise units the calibration "
                         f"may give up for a smaller scale; 0 = the lowest FD), got {value!r}")
    return float(value)


def check_window(values: dict) -> None:
    """start and stop (fractions of the sampling loop) must leave some steps guided."""
    if {"start", "stop"} <= set(values) and not values["start"] < values["stop"]:
        raise ValueError(f"start must be below stop (fractions of the sampling loop), got start={values['start']:g}, "
                         f"stop={values['stop']:g}")


def joint_target(targets: list[np.ndarray]) -> np.ndarray:
    joint = np.asarray(targets[0], dtype=float)
    for t in targets[1:]:
        joint = np.outer(joint, np.asarray(t, dtype=float)).ravel()
    return joint


X_PATH_COST = 2.2  # x path: a backward through the UNet's encoder half per guided step


class ProbeGuidance:
    """The two gradient paths of the probe-guided methods, written once. Subclasses define
    `probe_loss(h, batch)` (a scalar to decrease) and set probes, scale, path, start, stop,
    normalize; `path='h'` edits h at the middle block, `path='x'` moves x_t along the gradient
    taken through the UNet's encoder half."""

    supplied = ("probes", "target")
    needs_probe = True
    calibrates_scale = True  # `scale: auto` (audit.run.calibration)
    suite_defaults = {"scale": "auto"}  # a suite that names no scale gets it calibrated
    relative_cost = 1.05  # h path: the probe's linear head is all that back-propagates

    @classmethod
    def cost(cls, values: dict) -> float:
        return X_PATH_COST if values.get("path") == "x" else cls.relative_cost

    @classmethod
    def check_params(cls, values: dict) -> None:
        check_window(values)
        if values.get("aim") is not None:
            proportions(values["aim"], len(values["aim"]), "aim", "the label distribution to aim at")

    def probe_loss(self, h: torch.Tensor, batch) -> torch.Tensor:
        raise NotImplementedError

    @property
    def edits_h(self) -> bool:
        return self.path == "h"

    def active(self, batch) -> bool:
        return self.start <= batch.progress < self.stop and self.scale > 0

    def on_h(self, h: torch.Tensor, batch) -> torch.Tensor | None:
        if self.path != "h" or not self.active(batch):
            return None
        with torch.enable_grad():
            h_ = h.detach().float().requires_grad_(True)
            loss = self.probe_loss(h_, batch)
            (g,) = torch.autograd.grad(loss, h_)
        step = displacement(g, h, self.scale, loss, self.normalize, batch.state)
        return None if step is None else h - step

    def on_x(self, x: torch.Tensor, batch) -> torch.Tensor:
        if self.path != "x" or not self.active(batch):
            return x
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            loss = self.probe_loss(encode_h(batch, x_), batch)
            (g,) = torch.autograd.grad(loss, x_)
        step = displacement(g, x, self.scale, loss, self.normalize, batch.state)
        return x if step is None else (x - step).detach()
