"""The method interface: hooks into the adapter's denoising loop that do nothing by default.

A method may rewrite prompts (`prompts`), edit x_t before the UNet (`on_x`), replace h at
the middle block (`on_h`, needs `edits_h = True`) or change the UNet's output (`on_output`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch


@dataclass
class BatchContext:
    """What a method sees of the batch being sampled."""

    adapter: Any
    scheduler: Any
    seeds: list[int]
    prompts: Any
    context: torch.Tensor | None
    guidance_scale: float
    steps: int
    step_index: int = 0
    t: int = 0
    state: dict = field(default_factory=dict)
    # The denoiser's text-conditional prediction at this step, before classifier-free guidance
    # combined it with the unconditional one (set before on_output).
    conditional: torch.Tensor | None = None

    @property
    def progress(self) -> float:
        """Fraction of the sampling loop done before this step (0 at the first step)."""
        return self.step_index / max(1, self.steps)


class Method:
    """A debiasing method. Besides its hooks, a method declares on the class what it needs and
    what it supports; the runner, the suite checks, the plan view and the executors read these
    capabilities and never a method's name, so a new method is one file that registers itself."""

    name: ClassVar[str] = "none"
    title: ClassVar[str] = ""  # how sentences name it ("prompt debiasing"); default: its name
    edits_h: ClassVar[bool] = False
    # Guides with h-space probes trained on the suite's probe_labeler (built before the method).
    needs_probe: ClassVar[bool] = False
    # Whether the images depend on the cell's attribute setting; unguided sampling does not, so
    # its images are generated once per (model, prompt, seeds) and shared by every setting.
    uses_setting: ClassVar[bool] = True
    # Whether image i depends on the other samples of its batch (guidance on a batch statistic);
    # then batch size is part of the cell. False: per-seed noise, choices made over the whole cell.
    couples_batch: ClassVar[bool] = True
    # Applies to text-conditioned models only (it rewrites or steers with prompts).
    text_only: ClassVar[bool] = False
    # Acts on how images are sampled (every method but plain sampling does): a model that holds
    # finished images (source images:DIR) offers it nothing to act on, so its cells do not apply.
    acts_on_sampling: ClassVar[bool] = True
    # UNet evaluations per image and step, relative to one plain forward pass (the plan's time
    # estimate); see `cost`.
    relative_cost: ClassVar[float] = 1.0
    # Whether a `scale: auto` param is calibrated by trial batches before the cell generates.
    calibrates_scale: ClassVar[bool] = False
    # Defaults a suite that leaves a param out gets, where they differ from the constructor's (a
    # built method needs a number for its scale; a suite that names none gets `scale: auto`).
    # Cell ids and calibration records hash these (audit.registry.effective_params).
    suite_defaults: ClassVar[dict] = {}
    # Constructor arguments the runner fills in from the cell (probes, target, ...). Every other
    # argument is a suite param: its annotation (types, Literal choices, Annotated ranges) is what
    # a suite's `params` are checked against when the suite loads (audit.registry.check_params).
    supplied: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_params(cls, values: dict) -> None:
        """Rules across a suite's params that annotations cannot state (start < stop), on the
        checked values with defaults filled in; raise ValueError. Runs when the suite loads,
        before any probe or model exists, so it must stay cheap."""

    @classmethod
    def labelers(cls, values: dict) -> list[str]:
        """Labelers (registry names) the method itself runs, given its checked params: the suite
        checks that they label its settings' attributes with the same classes."""
        return []

    @classmethod
    def guided_by_probe_labeler(cls, values: dict) -> bool:
        """Whether the method, with these checked params, guides with the suite's probe_labeler
        (which must then not also judge the result)."""
        return cls.needs_probe

    @classmethod
    def images_setting(cls, values: dict, setting) -> object:
        """The part of a cell's attribute setting (audit.spec.SettingSpec) that its images depend
        on, given the method's checked params, as JSON-able data: cells of a suite that differ in
        nothing else make the same images, which are generated once and copied to the others.
        The whole setting when the method reads it, nothing when it does not."""
        return setting.model_dump() if cls.uses_setting else None

    @classmethod
    def cost(cls, values: dict) -> float:
        """UNet evaluations per image and step relative to plain sampling, with these params."""
        return cls.relative_cost

    @classmethod
    def not_applicable_to(cls, is_text_model: bool) -> str | None:
        """Why the method cannot run on a model of this kind, known before it loads (None: it can)."""
        if cls.text_only and not is_text_model:
            return f"{cls.title or cls.name} needs a text-conditioned model"
        return None

    def not_applicable(self, adapter) -> str | None:
        """Why this method cannot run on the model (None when it can)."""
        return None

    def prompts(self, prompts: list[str], seeds: list[int]) -> list[str]:
        return prompts

    def start_cell(self, seeds: list[int]) -> None:
        """Called once with every seed of a cell before its first batch."""

    def cell_choices(self, seeds: list[int]) -> list | None:
        """What start_cell decided for each of the cell's `seeds` that the seed's image depends on
        besides its noise, prompt and batch (an allocated class): the runner stores it with the
        image and generates the image again when it changes, e.g. when the cell's `samples` does.
        None: nothing. A method that overrides start_cell without overriding this is taken to
        depend on the whole cell: any change of its seeds regenerates every image."""
        if type(self).start_cell is Method.start_cell:
            return None
        return [[int(seeds[0]), len(seeds)] for _ in seeds]

    def start_batch(self, batch: BatchContext) -> None:
        pass

    def on_x(self, x: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        return x

    def on_h(self, h: torch.Tensor, batch: BatchContext) -> torch.Tensor | None:
        return None

    def on_output(self, output: torch.Tensor, x: torch.Tensor, batch: BatchContext) -> torch.Tensor:
        return output

    def end_batch(self, batch: BatchContext) -> dict:
        return dict(batch.state)

    def config(self) -> dict:
        """Everything that determines the method's behaviour (goes into the manifest)."""
        return {"name": self.name}


class NoGuidance(Method):
    """Plain sampling (the `none` method): the baseline every other method is compared with."""

    title = "no guidance"
    uses_setting = False
    couples_batch = False
    acts_on_sampling = False


class AllocatingMethod(Method):
    """A method that gives each sample a target class, in the proportions `shares` (the target
    unless a method aims elsewhere). The allocation is made over the whole cell (when
    start_cell was called), so an image's class never depends on its batch."""

    target: np.ndarray

    @property
    def shares(self) -> np.ndarray:
        return self.target

    def start_cell(self, seeds: list[int]) -> None:
        self._allocation = dict(zip((int(s) for s in seeds), allocate(self.shares, list(seeds)).tolist(),
                                    strict=True))

    def cell_choices(self, seeds: list[int]) -> list | None:
        return self.allocated(seeds).tolist()

    def allocated(self, seeds: list[int]) -> np.ndarray:
        table = getattr(self, "_allocation", None)
        if table is not None and all(int(s) in table for s in seeds):
            return np.asarray([table[int(s)] for s in seeds])
        return allocate(self.shares, list(seeds))

    def start_batch(self, batch: BatchContext) -> None:
        batch.state["allocated"] = torch.from_numpy(self.allocated(batch.seeds)).to(batch.adapter.device)

    def end_batch(self, batch: BatchContext) -> dict:
        state = dict(batch.state)
        state["allocated"] = state["allocated"].tolist()
        return state


def allocate(target: np.ndarray, seeds: list[int]) -> np.ndarray:
    """Class indices for a batch in the target proportions (largest remainder), in an order
    that depends only on the seeds, so the allocation is reproducible and batch-local."""
    target = np.asarray(target, dtype=float)
    n = len(seeds)
    counts = np.floor(target * n).astype(int)
    remainder = target * n - counts
    order = np.argsort(-remainder, kind="stable")
    counts[order[: n - counts.sum()]] += 1
    labels = np.repeat(np.arange(len(target)), counts)
    rng = np.random.default_rng([int(s) for s in seeds])
    return rng.permutation(labels)


def cross_attention_only(method: Method, adapter) -> str | None:
    """Why a method that edits a text context tensor (a UNet's cross-attention input) cannot run on
    this model: transformer families condition through a structure of several encoders' outputs."""
    if adapter.family.single_text_context:
        return None
    family = adapter.info.get("family") or type(adapter.family).__name__
    return (f"{method.title or method.name} edits a UNet's text context; {family} models condition "
            "otherwise (not supported yet)")
