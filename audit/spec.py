"""Suite files: pydantic models, YAML loading with one-line errors, and the cell plan.

A suite names models, methods, attribute settings with targets, and how many samples to
draw; its cells are model x method x setting (x prompt). Every user mistake becomes a
`SuiteError` whose message names the file, the YAML path, the problem and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit.registry import LABELERS, METHODS, method_params, resolve
from audit.zoo.synthfaces import ATTRIBUTE_PHRASES, ATTRIBUTES

DEFAULT_PROMPT = "a photo of a person"  # text models' prompt when a suite gives none


# Methods whose image i is the same whatever batch it is sampled in (per-seed noise, allocations
# made over the whole cell); the others couple a batch's samples, so batch size is part of a cell.
BATCH_INDEPENDENT_METHODS = ("none", "prompt")


class SuiteError(ValueError):
    """A mistake in a suite file; the message is one line meant for the user."""


def directory_name(value: str) -> str:
    """Names that become directory names in OUT: no separators, no leading dot."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ValueError("use letters, digits, '.', '_' and '-' only (it names directories)")
    return value


def prompt_slug(prompt: str) -> str:
    """A prompt as lowercase letters, digits and dashes, for directory names."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower())


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    name: str = Field(min_length=1, max_length=100)
    source: str = Field(description="zoo:NAME, a local diffusers directory, hf:ORG/REPO or custom:NAME")
    revision: str | None = None
    steps: int = Field(50, ge=1, le=1000)
    guidance_scale: float = Field(1.0, ge=0, description="classifier-free guidance (text models)")
    negative_prompt: str = ""
    prompts: list[str] | None = None
    prompts_file: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    scheduler: str | None = Field(None, description="diffusers scheduler class name (default DDIMScheduler)")
    variant: str | None = Field(None, description="weight-file variant, e.g. fp16")
    memory: list[Literal["attention_slicing", "vae_slicing", "vae_tiling"]] = Field(
        default_factory=list, description="memory savers for small GPUs (do not change the cell id)")
    eta: float | None = Field(None, ge=0, le=1, description=(
        "DDIM's stochasticity: 0 the deterministic sampler, 1 ancestral sampling (each image's step noise "
        "from its own seed); needs a scheduler whose step takes eta. Unset: the zoo model's own "
        "(synthfaces-ddpm: 1), else 0"))

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return directory_name(v)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import diffusers

        found = getattr(diffusers, v, None) if v.isidentifier() else None
        if not (isinstance(found, type) and issubclass(found, diffusers.SchedulerMixin)):
            raise ValueError(f"unknown scheduler {v!r}; use a diffusers scheduler class name such as "
                             "DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler")
        return v

    def identity(self) -> dict:
        """What determines the samples: memory savers are left out, and loading options added after
        the first runs only count when set, so existing run directories keep their cell ids (eta 0
        samples exactly as eta unset did: both are the deterministic DDIM step)."""
        data = self.model_dump(exclude={"memory"})
        if not data["eta"]:
            data["eta"] = None
        return {k: v for k, v in data.items() if not (k in self.ADDED_OPTIONS and v is None)}

    ADDED_OPTIONS: ClassVar[tuple[str, ...]] = ("scheduler", "variant", "eta")  # as methods' (audit.registry)

    @model_validator(mode="after")
    def _resolve_eta(self):
        """eta needs a scheduler whose step takes it; unset, a zoo model samples with its own."""
        if self.eta is not None and not self._scheduler_takes_eta():
            raise ValueError(f"eta={self.eta:g}: {self.scheduler} has no eta; use scheduler: DDIMScheduler "
                             "(or DDPMScheduler for ancestral sampling without eta) or drop eta")
        if self.eta is None and self.source.startswith("zoo:") and self._scheduler_takes_eta():
            from audit.zoo.recipes import RECIPES

            self.eta = RECIPES[self.source[4:]].sampling_eta  # the zoo model's sampler
        return self

    def _scheduler_takes_eta(self) -> bool:
        if self.scheduler is None:
            return True  # DDIMScheduler
        import inspect

        import diffusers

        return "eta" in inspect.signature(getattr(diffusers, self.scheduler).step).parameters

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v.startswith("zoo:"):
            from audit.zoo.recipes import RECIPES

            name = v[4:]
            if name not in RECIPES or not RECIPES[name].__class__.__name__.startswith("Diffusion"):
                allowed = [n for n, r in RECIPES.items() if r.__class__.__name__.startswith("Diffusion")]
                raise ValueError(f"unknown zoo model {name!r}; allowed: {', '.join(allowed)}")
        if v.startswith("custom:"):
            from audit.registry import MODELS

            if v[7:] not in MODELS:
                raise ValueError(f"no custom model {v[7:]!r} is registered; call audit.registry.register_model"
                                 f"({v[7:]!r}, factory) before loading the suite (registered: "
                                 f"{', '.join(sorted(MODELS)) or 'none'})")
        return v


class MethodSpec(Strict):
    name: str
    label: str | None = Field(None, description="display name when a method appears twice")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(sorted(METHODS))}")
        return v

    @field_validator("label")
    @classmethod
    def _safe_label(cls, v: str | None) -> str | None:
        return None if v is None else directory_name(v)

    @property
    def display(self) -> str:
        return self.label or self.name


class SettingSpec(Strict):
    attributes: list[str] = Field(min_length=1, max_length=4)
    target: Literal["uniform"] | list[float] | dict[str, float] = "uniform"
    classes: dict[str, list[str]] | None = Field(None, description="classes per attribute (non-zoo labelers)")

    def class_lists(self) -> list[list[str]]:
        known = {**{k: list(v) for k, v in ATTRIBUTES.items()}, **(self.classes or {})}
        return [known[a] for a in self.attributes]

    def joint_classes(self) -> list[str]:
        names = [""]
        for classes in self.class_lists():
            names = [f"{a}&{c}" if a else c for a in names for c in classes]
        return names

    def target_vector(self) -> list[float]:
        joint = self.joint_classes()
        if self.target == "uniform":
            return [1 / len(joint)] * len(joint)
        if isinstance(self.target, dict):
            return [float(self.target.get(c, 0.0)) for c in joint]
        return [float(v) for v in self.target]

    @property
    def key(self) -> str:
        return "x".join(self.attributes)

    @property
    def target_label(self) -> str:
        if self.target == "uniform":
            return "uniform"
        return "/".join(f"{v:g}" for v in self.target_vector())

    @model_validator(mode="after")
    def _check(self) -> SettingSpec:
        known = {**ATTRIBUTES, **(self.classes or {})}
        for a in self.attributes:
            if a not in known:
                raise ValueError(f"unknown attribute {a!r}; allowed: {', '.join(known)} "
                                 "(or declare its classes under 'classes')")
        joint = self.joint_classes()
        if isinstance(self.target, dict):
            unknown = sorted(set(self.target) - set(joint))
            if unknown:
                raise ValueError(f"target names unknown classes {unknown}; allowed: {', '.join(joint)}")
        vector = self.target_vector()
        if len(vector) != len(joint):
            raise ValueError(f"target has {len(vector)} proportions but {'x'.join(self.attributes)} has "
                             f"{len(joint)} classes ({', '.join(joint)})")
        if min(vector) < 0 or not math.isclose(sum(vector), 1.0, abs_tol=1e-6):
            raise ValueError(f"target proportions must be >= 0 and sum to 1, got sum {sum(vector):.4g}")
        return self


class ProbeSpec(Strict):
    n: int = Field(1000, ge=16)
    batch_size: int = Field(64, ge=1)


FID_EXTRACTORS = ("synthfaces", "mobilenet_v2", "inception")  # audit.metrics.fid.EXTRACTORS (kept torch-free)
WEIGHTED_EXTRACTORS = ("inception",)  # extractors whose weights the user supplies


class FidSpec(Strict):
    extractor: str = "synthfaces"
    reference: str = Field("synthfaces:biased", description="synthfaces:WORLD or a directory of images")
    n: int = Field(1000, ge=2)
    weights: str | None = Field(None, description="extractor weights file (inception: pt_inception-2015-12-05-*.pth)")

    @field_validator("extractor")
    @classmethod
    def _known_extractor(cls, v: str) -> str:
        if v not in FID_EXTRACTORS:
            raise ValueError(f"unknown FID extractor {v!r}; allowed: {', '.join(FID_EXTRACTORS)}")
        return v

    @model_validator(mode="after")
    def _weights_only_where_supplied(self) -> FidSpec:
        if self.weights and self.extractor not in WEIGHTED_EXTRACTORS:
            raise ValueError(f"weights applies to the {', '.join(WEIGHTED_EXTRACTORS)} extractor, "
                             f"not {self.extractor!r} (its weights are built in)")
        return self


class Suite(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    settings: list[SettingSpec] = Field(min_length=1)
    samples: int = Field(100, ge=1, le=10_000_000)
    batch_size: int = Field(50, ge=1, le=4096)
    seed: int = Field(0, ge=0)
    labelers: list[str] = Field(default_factory=lambda: ["synthfaces-eval"], min_length=1)
    probe_labeler: str = "synthfaces-pseudo"
    labeler_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="keyword options per labeler, e.g. clip_zeroshot's model_path and classes")
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    metrics: list[Literal["fairness", "fid", "clip"]] = Field(default_factory=lambda: ["fairness", "fid"])
    fid: list[FidSpec] = Field(default_factory=lambda: [FidSpec()], min_length=1, description=(
        "one FID spec or a list of them: the first is the primary FID (columns fid, fid_target), each further "
        "extractor adds columns fid[EXTRACTOR] and fid_target[EXTRACTOR]"))
    tolerance: float = Field(0.05, gt=0, lt=1, description="TOST equivalence margin per class")
    phrases: dict[str, dict[str, str]] = Field(default_factory=dict)
    clip_model: str | None = None

    @field_validator("labelers", "probe_labeler")
    @classmethod
    def _known_labelers(cls, v: list[str] | str) -> list[str] | str:
        for name in [v] if isinstance(v, str) else v:
            if name not in LABELERS:
                raise ValueError(f"unknown labeler {name!r}; allowed: {', '.join(sorted(LABELERS))}")
        return v

    @field_validator("fid", mode="before")
    @classmethod
    def _one_or_many_fids(cls, v):
        return [v] if isinstance(v, dict | FidSpec) else v

    @field_validator("fid")
    @classmethod
    def _distinct_extractors(cls, v: list[FidSpec]) -> list[FidSpec]:
        seen = set()
        for spec in v:
            if spec.extractor in seen:
                raise ValueError(f"extractor {spec.extractor!r} is listed twice; list each extractor once "
                                 "(it names the columns fid[EXTRACTOR])")
            seen.add(spec.extractor)
        return v

    @model_validator(mode="after")
    def _independent_labelers(self) -> Suite:
        if self.probe_labeler in self.labelers and any(m.name.endswith("guidance") for m in self.methods):
            raise ValueError(f"probe_labeler {self.probe_labeler!r} is also an evaluation labeler: the "
                             "labeler that trains the guiding probes must not judge the result")
        unused = sorted(set(self.labeler_options) - {*self.labelers, self.probe_labeler})
        if unused:
            raise ValueError(f"labeler_options names {', '.join(unused)}, which the suite does not use; "
                             f"used labelers: {', '.join([*self.labelers, self.probe_labeler])}")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        displays = [m.display for m in self.methods]
        if len(set(displays)) != len(displays):
            raise ValueError("a method listed twice needs a distinct 'label'")
        return self

    def phrase(self, attribute: str, cls: str) -> str:
        if attribute in self.phrases and cls in self.phrases[attribute]:
            return self.phrases[attribute][cls]
        if attribute in ATTRIBUTE_PHRASES and cls in ATTRIBUTE_PHRASES[attribute]:
            return ATTRIBUTE_PHRASES[attribute][cls][0]
        return f"with {cls} {attribute.replace('_', ' ')}"


class Cell(BaseModel):
    """One unit of work: a model under a method for an attribute setting (and prompt)."""

    model: ModelSpec
    method: MethodSpec
    setting: SettingSpec
    prompt: str | None
    samples: int
    batch_size: int
    seed: int
    skip_reason: str | None = None

    @property
    def cell_id(self) -> str:
        method = {**self.method.model_dump(), "params": method_params(self.method.name, self.method.params)}
        identity = [self.model.identity(), method, self.setting.model_dump(), self.prompt, self.seed]
        if self.batch_coupled:  # guidance couples the samples of a batch
            identity.append(self.batch_size)
        payload = json.dumps(identity, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
        prompt = "" if self.prompt is None else "__" + prompt_slug(self.prompt)[:40]
        return f"{self.model.name}__{self.method.display}__{self.setting.key}{prompt}__{digest}"

    @property
    def shares_images(self) -> bool:
        """Whether the method ignores the attribute setting (unguided sampling), so cells that
        differ only in their setting share one set of generated images."""
        return not getattr(resolve(METHODS, self.method.name, "method"), "uses_setting", True)

    @property
    def image_key(self) -> str:
        """Everything but the setting that decides the images of a setting-independent cell."""
        return json.dumps([self.model.identity(), self.method.model_dump(), self.prompt, self.samples,
                           self.batch_size, self.seed], sort_keys=True)

    @property
    def seeds(self) -> list[int]:
        """Image i uses seed + i in every cell of the suite, so methods compare on the same noise.
        `samples` is not part of the cell id: a cell that grows or shrinks keeps its directory,
        and the runner keeps only the images still generated as a fresh run would make them."""
        return list(range(self.seed, self.seed + self.samples))

    @property
    def batch_coupled(self) -> bool:
        """Whether an image depends on the other samples of its batch (guidance), so the batch
        size is part of the cell and a batch is generated, kept or regenerated as a whole."""
        return self.method.name not in BATCH_INDEPENDENT_METHODS

    @property
    def batches(self) -> list[list[int]]:
        """The seeds in batches of batch_size, the last one partial: how a batch-coupled cell is
        sampled (image i of such a cell depends on which batch it is in)."""
        seeds = self.seeds
        return [seeds[i:i + self.batch_size] for i in range(0, len(seeds), self.batch_size)]


def _format_location(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_suite(path: str | Path, samples: int | None = None) -> Suite:
    """Parse and validate a suite file; every problem becomes a one-line SuiteError."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SuiteError(f"{path}:{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite must be a YAML mapping with keys name, models, methods, settings")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            model = _model_at(parent)
            allowed = ", ".join(model.model_fields) if model else ""
            message = f"unknown key {err['loc'][-1]!r}" + (f"; allowed: {allowed}" if allowed else "")
        elif err["type"] == "literal_error":
            message = f"{message} (got {err.get('input')!r})"
        loc = err["loc"]
        if loc[:1] == ("fid",):
            keys, got = ", ".join(FidSpec.model_fields), type(err.get("input")).__name__
            if err["type"] == "list_type":
                message = f"expected a mapping with keys {keys}, or a list of such mappings (got {got})"
            elif err["type"] == "model_type":
                message = f"each entry must be a mapping with keys {keys} (got {got})"
            elif err["type"] == "too_short":
                message = "give at least one FID spec (or leave fid out of metrics)"
            if isinstance(data.get("fid"), dict) and loc[1:2] == (0,):  # a single spec: no list index to show
                loc = ("fid", *loc[2:])
        raise SuiteError(f"{path}: {_format_location(loc)}: {message}") from None
    for i, model in enumerate(suite.models):
        if model.prompts_file:
            prompt_path = (path.parent / model.prompts_file).resolve()
            if not prompt_path.is_file():
                raise SuiteError(f"{path}: models[{i}].prompts_file: {model.prompts_file} not found "
                                 f"(relative to the suite file)")
            lines = [ln.strip() for ln in prompt_path.read_text().splitlines()]
            model.prompts = (model.prompts or []) + [ln for ln in lines if ln and not ln.startswith("#")]
    if samples is not None:
        if samples < 1:
            raise SuiteError(f"--n must be a positive number of samples per cell, got {samples}")
        suite.samples = samples
    return suite


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Suite
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def plan(suite: Suite) -> list[Cell]:
    """All cells of the suite, those that do not apply marked with the reason."""
    cells = []
    for model in suite.models:
        is_text = _is_text_model(model)
        prompts = (model.prompts or [DEFAULT_PROMPT]) if is_text else [None]
        for method in suite.methods:
            for setting in suite.settings:
                for prompt in prompts:
                    reason = None
                    if method.name == "prompt" and not is_text:
                        reason = "prompt debiasing needs a text-conditioned model"
                    cells.append(Cell(model=model, method=method, setting=setting, prompt=prompt,
                                      samples=suite.samples, batch_size=suite.batch_size, seed=suite.seed,
                                      skip_reason=reason))
    return cells


def _is_text_model(model: ModelSpec) -> bool:
    if model.source.startswith("zoo:"):
        from audit.zoo.recipes import RECIPES

        return bool(getattr(RECIPES[model.source[4:]], "conditional", False))
    if model.source.startswith("custom:"):  # known only once loaded: prompts say it is a text model
        return bool(model.prompts or model.prompts_file)
    from audit.models.loading import ModelNotAvailable, resolve_source

    try:
        index = resolve_source(model.source, model.revision)[0] / "model_index.json"
    except ModelNotAvailable:  # weights not here (a dry run): a model with prompts is a text model
        return bool(model.prompts or model.prompts_file)
    return "text_encoder" in json.loads(index.read_text())
