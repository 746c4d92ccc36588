"""h-space probes: the paper's "Attribute Distribution Predictor".

One linear head per sampling timestep on the flattened, standardised h, K classes, logits
divided by a temperature tau (the paper uses 8 for its SD heads; ours are calibrated by
validation and default to 1). Saved as safetensors + JSON meta.

Each probe also keeps its confusion at every step: row i is the mean predicted distribution
over samples whose final label is i. A probe's batch mean then estimates M^T q, not the
batch's label distribution q, so distribution guidance aims the probe's mean at M^T pi to make
the final images' distribution pi (label-shift correction, as in Lipton et al. 2018's BBSE).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from audit.errors import SuiteError
from audit.files import atomic_path, atomic_write_json

WEIGHTS, META = "probe.safetensors", "probe.json"


class ProbeError(SuiteError):
    """A probe folder that cannot be loaded (missing, torn or mismatched files); one line."""


class Probe(nn.Module):
    def __init__(self, attribute: str, classes: list[str], timesteps: list[int], dim: int, tau: float = 1.0,
                 meta: dict | None = None):
        super().__init__()
        self.attribute, self.classes, self.tau = attribute, list(classes), float(tau)
        self.timesteps = [int(t) for t in timesteps]
        self.meta = dict(meta or {})
        steps, k = len(self.timesteps), len(self.classes)
        self.weight = nn.Parameter(torch.zeros(steps, k, dim))
        self.bias = nn.Parameter(torch.zeros(steps, k))
        self.register_buffer("mean", torch.zeros(steps, dim))
        self.register_buffer("std", torch.ones(steps, dim))
        self.register_buffer("confusion", torch.eye(k).repeat(steps, 1, 1))

    def index(self, t: int | torch.Tensor) -> int:
        """Head of the trained timestep nearest to t (sampling may use other step counts)."""
        t = int(t)
        return min(range(len(self.timesteps)), key=lambda i: abs(self.timesteps[i] - t))

    def logits(self, h: torch.Tensor, t: int | torch.Tensor, tempered: bool = True) -> torch.Tensor:
        i = self.index(t)
        z = (h.flatten(1).float() - self.mean[i]) / self.std[i]
        logits = z @ self.weight[i].T + self.bias[i]
        return logits / self.tau if tempered else logits

    def probs(self, h: torch.Tensor, t: int | torch.Tensor, tau: float | None = None) -> torch.Tensor:
        """Class probabilities at the probe's temperature, or at `tau` (times its own)."""
        logits = self.logits(h, t)
        return (logits if tau is None else logits / tau).softmax(-1)

    def measure_confusion(self, H: torch.Tensor, labels: torch.Tensor) -> None:
        """Set each step's confusion from recorded h [S, N, D] and final labels [N]; a class
        without samples keeps an identity row (no evidence of confusion)."""
        k = len(self.classes)
        onehot = torch.nn.functional.one_hot(labels.long(), k).float()
        counts = onehot.sum(0)
        with torch.no_grad():
            for s, t in enumerate(self.timesteps):
                probs = self.probs(H[s], t)
                rows = onehot.T @ probs / counts.clamp(min=1)[:, None]
                rows[counts == 0] = torch.eye(k, device=rows.device)[counts == 0]
                self.confusion[s] = rows

    def step_confusion(self, t: int | torch.Tensor) -> torch.Tensor:
        return self.confusion[self.index(t)]

    def save(self, directory: str | Path, half: bool = False) -> None:
        """safetensors + JSON; `half` stores float16 (loading always gives float32). probe.json
        marks a probe as saved, so it goes first and comes back last, each file written whole
        (temporary file, then rename); it records the weights' checksum, so weights that do not
        belong to it (a kill between the two files while replacing a probe) are recognised."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / META).unlink(missing_ok=True)
        dtype = torch.float16 if half else torch.float32
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file(tensors, tmp)
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        meta = {**self.meta, "attribute": self.attribute, "classes": self.classes, "tau": self.tau,
                "timesteps": self.timesteps, "dim": int(self.weight.shape[-1]), "weights_sha256": digest}
        atomic_write_json(directory / META, meta)

    @staticmethod
    def saved(directory: str | Path) -> bool:
        """Whether a save of a probe got as far as its probe.json (which it writes last)."""
        return (Path(directory) / META).exists()

    @classmethod
    def problem(cls, directory: str | Path) -> str | None:
        """Why the probe in `directory` cannot be loaded, or None when it can."""
        try:
            cls.load(directory)
        except ProbeError as error:
            return str(error)
        return None

    @classmethod
    def load(cls, directory: str | Path) -> Probe:
        """The probe saved in `directory`; anything missing, torn or not matching is a one-line
        ProbeError naming the file (never a traceback from the JSON or safetensors reader)."""
        directory = Path(directory)
        meta_file, weights_file = directory / META, directory / WEIGHTS
        if not meta_file.exists():
            raise ProbeError(f"no probe at {directory} (no {META}): train one with `diffaudit probe train`")
        try:
            meta = json.loads(meta_file.read_text())
            probe = cls(meta["attribute"], meta["classes"], meta["timesteps"], meta["dim"], meta["tau"], meta)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise ProbeError(f"{meta_file} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:100]}): "
                             "train the probe again (`diffaudit probe train`)") from None
        expected = probe.meta.pop("weights_sha256", None)
        try:
            data = weights_file.read_bytes()
            if expected is not None and hashlib.sha256(data).hexdigest() != expected:
                raise ValueError(f"{WEIGHTS} does not match the checksum {META} records")
            tensors = load_file(weights_file)
            if "confusion" not in tensors:  # probes saved before confusions were measured
                tensors["confusion"] = probe.confusion
                probe.meta["confusion"] = "not measured (identity)"
            probe.load_state_dict(tensors)
        except Exception as e:  # safetensors and torch raise several kinds of error on a damaged file
            raise ProbeError(f"{weights_file} is missing or damaged ({' '.join(str(e).split())[:120]}): train "
                             "the probe again (`diffaudit probe train`)") from None
        return probe.eval().requires_grad_(False)


def joint_confusion(probes: list[Probe], t) -> torch.Tensor:
    """Confusion over the product space (first attribute most significant), assuming the
    probes err independently given the labels."""
    joint = probes[0].step_confusion(t)
    for probe in probes[1:]:
        joint = torch.kron(joint, probe.step_confusion(t))
    return joint


def joint_log_probs(probes: list[Probe], h: torch.Tensor, t) -> torch.Tensor:
    """log joint_probs, computed in log space: a confidently wrong sample keeps its gradient
    (clamping probabilities before the log zeroed it below the clamp, so such a sample never moved)."""
    joint = probes[0].logits(h, t).log_softmax(-1)
    for probe in probes[1:]:
        joint = (joint[:, :, None] + probe.logits(h, t).log_softmax(-1)[:, None, :]).flatten(1)
    return joint


def joint_probs(probes: list[Probe], h: torch.Tensor, t, tau: float | None = None) -> torch.Tensor:
    """Per-sample joint class probabilities over the product space of several attributes
    ([B, K1*K2*...], first attribute most significant), from per-attribute probes."""
    joint = probes[0].probs(h, t, tau)
    for probe in probes[1:]:
        joint = (joint[:, :, None] * probe.probs(h, t, tau)[:, None, :]).flatten(1)
    return joint
