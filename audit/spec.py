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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from audit.errors import SuiteError
from audit.registry import (
    ATTRIBUTE_PHRASES,
    ATTRIBUTES,
    BUILT_IN_SOURCES,
    FID_EXTRACTORS,
    LABELERS,
    METHODS,
    SOURCES,
    check_method_params,
    labeler_vocabulary,
    method_params,
    model_source,
    resolve,
)

DEFAULT_PROMPT = "a photo of a person"  # text models' prompt when a suite gives none



class LocatedError(ValueError):
    """A validator's error about a place below the model it validates (load_suite shows `loc`,
    e.g. ("settings", 0, "classes", "skin_tone"), in place of the validator's own)."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc


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
    source: str = Field(description="a local diffusers directory, hf:ORG/REPO, custom:NAME (a registered model), "
                                    "images:DIR (finished images with a metadata.jsonl, see image folders) "
                                    "or PREFIX:NAME of a plug-in's model source (the bundled zoo's, see the zoo docs)")
    revision: str | None = None
    # Dumped only when set: records keyed on a model's dump (calibration records) keep their names.
    allow_pickle: bool = Field(False, exclude_if=lambda v: not v, description=(
        "load pickled weights (.bin/.pt) where a component has no .safetensors; unpickling can run code "
        "hidden in the file, so only for weights you trust (recorded in the manifest)"))
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
        "from its own seed); needs a scheduler whose step takes eta. Unset: the one the model's source "
        "names (the zoo's unconditional model: 1), else 0"))
    hspace: str | None = Field(None, description=(
        "the module whose output is h for probes and h-path guidance, as a module path (e.g. "
        "transformer_blocks.12); unset: the UNet's mid_block, or a transformer's middle block"))
    hspace_pool: int | None = Field(None, ge=1, le=64, description=(
        "a transformer's h is average-pooled to at most this many cells per side (unset: 8); see "
        "docs/real-models.md"))

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
        """What determines the samples: memory savers and the weight-format opt-in are left out,
        and loading options added after the first runs only count when set, so existing run
        directories keep their cell ids (eta 0 samples exactly as eta unset did: both are the
        deterministic DDIM step)."""
        data = self.model_dump(exclude={"memory", "allow_pickle"})
        if not data["eta"]:
            data["eta"] = None
        return {k: v for k, v in data.items() if not (k in self.ADDED_OPTIONS and v is None)}

    # as methods' (audit.registry)
    ADDED_OPTIONS: ClassVar[tuple[str, ...]] = ("scheduler", "variant", "eta", "hspace", "hspace_pool")

    @model_validator(mode="after")
    def _resolve_eta(self):
        """eta needs a scheduler whose step takes it; unset, a model samples with the eta its
        source names (the sampler it was made for), if any."""
        if self.eta is not None and not self._scheduler_takes_eta():
            raise ValueError(f"eta={self.eta:g}: {self.scheduler} has no eta; use scheduler: DDIMScheduler "
                             "(or DDPMScheduler for ancestral sampling without eta) or drop eta")
        owner = model_source(self.source)
        if self.eta is None and owner is not None and self._scheduler_takes_eta():
            self.eta = owner[0].model_defaults(owner[1]).get("eta")
        return self

    def _scheduler_takes_eta(self) -> bool:
        if self.scheduler is None:
            return True  # DDIMScheduler
        import inspect

        import diffusers

        return "eta" in inspect.signature(getattr(diffusers, self.scheduler).step).parameters

    def shipped_probes(self, labeler: str, prompt: str | None) -> Path | None:
        """The folder of probes (one per attribute) the model's source ships for `labeler`, for
        the default prompt only; None: probes are trained on demand."""
        owner = model_source(self.source)
        if owner is None or prompt not in (None, DEFAULT_PROMPT):
            return None
        folder = owner[0].shipped_probes(owner[1], labeler)
        return None if folder is None else Path(folder)

    def seconds_per_image_step(self) -> float | None:
        """The sampling cost its source measured (for the dry run's estimate), or None."""
        owner = model_source(self.source)
        return owner[0].seconds_per_image_step(owner[1]) if owner else None

    @property
    def finished_images(self) -> str | None:
        """Why the model cannot sample, when its source holds finished images (images:DIR): the
        plan marks every method that acts on sampling not applicable with this reason."""
        from audit.image_folder import is_image_folder

        return f"{self.source} holds finished images: nothing to guide" if is_image_folder(self.source) else None

    @model_validator(mode="after")
    def _image_folder_entry(self):
        """An image folder's entry names no sampler settings (nothing samples) and selects its
        `prompts` among those metadata.jsonl gives."""
        if not self.finished_images:
            return self
        from audit.image_folder import SAMPLING_FIELDS

        given = [name for name in SAMPLING_FIELDS if getattr(self, name) != type(self).model_fields[name].get_default(
            call_default_factory=True)]
        if given:
            raise ValueError(f"{given[0]} does not apply to {self.source}: its images are finished (nothing samples); "
                             f"remove {', '.join(given)} (the folder's content hash is its revision)")
        self.check_folder_prompts()
        return self

    def check_folder_prompts(self) -> None:
        """ValueError when `prompts` names one that metadata.jsonl does not."""
        from audit.image_folder import read_folder

        known = read_folder(self.source).prompts()
        unknown = [p for p in self.prompts or [] if p not in known]
        if unknown:
            listed = "; ".join(repr(p) for p in known[:10]) + ("; ..." if len(known) > 10 else "")
            raise ValueError(f"prompt {unknown[0]!r} is not in {self.source}'s metadata.jsonl; prompts selects "
                             f"among its prompts ({listed}) or, left out, takes them all")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        from audit.image_folder import is_image_folder, read_folder

        if is_image_folder(v):
            read_folder(v)  # a bad folder is refused when the suite loads, before anything is written
            return v
        owner = model_source(v)
        if owner is not None:
            owner[0].check(owner[1])
        prefix, sep, _ = v.partition(":")
        if owner is None and sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]+", prefix) \
                and prefix not in BUILT_IN_SOURCES and not Path(v).expanduser().exists():
            prefixes = ", ".join(f"{p}:" for p in (*BUILT_IN_SOURCES, *sorted(SOURCES)))
            raise ValueError(f"unknown model source prefix {prefix + ':'!r}; allowed: {prefixes} or a local "
                             "diffusers directory (is the plug-in that provides it installed?)")
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

    @field_validator("params")
    @classmethod
    def _known_params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Names, types and ranges from the method's constructor, checked now rather than when
        the method is built after hours of generation (kept as written: they name the cell)."""
        if "name" in info.data:
            check_method_params(info.data["name"], v)
        return v

    def checked_params(self) -> dict[str, Any]:
        """Every suite param of the method, defaults filled in."""
        return check_method_params(self.name, self.params)

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


class FidSpec(Strict):
    extractor: str = Field(description="a registered FID extractor: inception (with weights), mobilenet_v2, or a "
                                       "plug-in's; default: the one the models' source names")
    reference: str = Field(description="a directory of real images, or PREFIX:NAME of a plug-in's generated set; "
                                       "default: the one the models' source names")
    n: int = Field(1000, ge=2)
    weights: str | None = Field(None, description="extractor weights file (inception: pt_inception-2015-12-05-*.pth)")

    @field_validator("extractor")
    @classmethod
    def _known_extractor(cls, v: str) -> str:
        if v not in FID_EXTRACTORS:
            raise ValueError(f"unknown FID extractor {v!r}; allowed: {', '.join(sorted(FID_EXTRACTORS))}")
        return v

    @model_validator(mode="after")
    def _weights_only_where_supplied(self) -> FidSpec:
        weighted = [name for name, entry in FID_EXTRACTORS.items() if entry.weighted]
        if self.weights and self.extractor not in weighted:
            raise ValueError(f"weights applies to the {', '.join(weighted)} extractor, "
                             f"not {self.extractor!r} (its weights are built in)")
        return self


class Suite(Strict):
    name: str = Field(min_length=1, max_length=100, description="names the default output directory runs/NAME")
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    settings: list[SettingSpec] = Field(min_length=1)
    samples: int = Field(100, ge=1, le=10_000_000)
    batch_size: int = Field(50, ge=1, le=4096)
    seed: int = Field(0, ge=0)
    labelers: list[str] = Field(min_length=1, description=(
        "the evaluation labelers; default: the ones the models' source names, when it names some"))
    probe_labeler: str | None = Field(None, description=(
        "the labeler whose pseudo-labels train the guiding probes (methods that need probes, universal guidance "
        "without its own labeler); default: the one the models' source names, when it names one"))
    labeler_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="keyword options per labeler, e.g. clip_zeroshot's model_path and classes")
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    metrics: list[Literal["fairness", "fid", "clip"]] = Field(default_factory=lambda: ["fairness", "fid"])
    fid: list[FidSpec] = Field(default_factory=list, description=(
        "one FID spec or a list of them: the first is the primary FID (columns fid, fid_target), each further "
        "extractor adds columns fid[EXTRACTOR] and fid_target[EXTRACTOR]; keys left out come from the models' "
        "source, when it names an FID for its world"))
    tolerance: float = Field(0.05, gt=0, lt=1, description="TOST equivalence margin per class")
    phrases: dict[str, dict[str, str]] = Field(default_factory=dict)
    clip_model: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return directory_name(v)

    @model_validator(mode="before")
    @classmethod
    def _source_defaults(cls, data):
        """Keys a suite leaves out that its models' source names (labelers, probe_labeler, fid), when
        every model's source names the same: an FID or labeler made for one world is never applied
        silently to a model from another. Without an FID reference, the default metrics leave FID out."""
        if not isinstance(data, dict):
            return data
        defaults = agreed_source_defaults(data.get("models"))
        data = dict(data)
        for key in ("labelers", "probe_labeler"):
            if key not in data and key in defaults:
                data[key] = defaults[key]
        fid = defaults.get("fid")
        if "fid" not in data and fid is not None:
            data["fid"] = [dict(fid)]
        elif isinstance(data.get("fid"), list | dict) and fid is not None:
            entries = data["fid"] if isinstance(data["fid"], list) else [data["fid"]]
            data["fid"] = [{**fid, **e} if isinstance(e, dict) else e for e in entries]
        if "metrics" not in data and not data.get("fid"):
            data["metrics"] = ["fairness"]
        return data

    @field_validator("labelers", "probe_labeler")
    @classmethod
    def _known_labelers(cls, v: list[str] | str | None) -> list[str] | str | None:
        for name in [] if v is None else [v] if isinstance(v, str) else v:
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
        if "fid" in self.metrics and not self.fid:
            if "fid" in self.model_fields_set:
                raise LocatedError(("fid",), "give at least one FID spec (or leave fid out of metrics)")
            raise LocatedError(("fid",), "metrics names fid but the suite gives no fid reference and its models' "
                               "source names none: add fid: {extractor: inception, weights: FILE, reference: "
                               "DIR_OF_REAL_IMAGES} or drop fid from metrics")
        for i, method in enumerate(self.methods):
            factory = resolve(METHODS, method.name, "method")
            values = method.checked_params()
            if factory.guided_by_probe_labeler(values):
                if self.probe_labeler is None:
                    raise LocatedError(("probe_labeler",), f"required by methods[{i}] ({method.display}), which "
                                       "guides with it; no model's source names one: name a labeler of the "
                                       "guided attributes")
                if self.probe_labeler in self.labelers:
                    raise ValueError(f"probe_labeler {self.probe_labeler!r} is also an evaluation labeler: the "
                                     "labeler that trains the guiding probes must not judge the result")
            judged = sorted(set(factory.labelers(values)) & set(self.labelers))
            if judged:
                raise LocatedError(("methods", i), f"{method.display} guides with labeler {judged[0]!r}, which is "
                                   "also an evaluation labeler: the labeler that guides must not judge the result")
        used = [*self.labelers, *([self.probe_labeler] if self.probe_labeler else [])]
        unused = sorted(set(self.labeler_options) - set(used))
        if unused:
            raise ValueError(f"labeler_options names {', '.join(unused)}, which the suite does not use; "
                             f"used labelers: {', '.join(used)}")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        displays = [m.display for m in self.methods]
        if len(set(displays)) != len(displays):
            raise ValueError("a method listed twice needs a distinct 'label'")
        return self

    @model_validator(mode="after")
    def _labelers_label_the_settings(self) -> Suite:
        """Each setting's attributes and classes (names and order) against what the labelers
        that will judge or guide it declare, read without loading them: an order that differs
        would pair the target's proportions with the wrong classes (and used to fail with a
        KeyError only once every image was generated)."""
        roles = {name: "evaluation labeler" for name in self.labelers}
        method_labelers: dict[str, str] = {}  # labeler -> the method that runs it
        for i, method in enumerate(self.methods):
            factory = resolve(METHODS, method.name, "method")
            if factory.guided_by_probe_labeler(method.checked_params()):
                roles.setdefault(self.probe_labeler, "probe labeler")
            for name in getattr(factory, "labelers", lambda values: [])(method.checked_params()):
                method_labelers.setdefault(name, f"methods[{i}] ({method.display})")
                roles.setdefault(name, f"labeler of methods[{i}]")
        vocabularies = {}
        for name in [*roles, *(n for n in self.labeler_options if n not in roles)]:
            try:
                vocabularies[name] = labeler_vocabulary(name, self.labeler_options.get(name, {}))
            except ValueError as e:
                raise LocatedError(("labeler_options", name), str(e)) from None
        for i, setting in enumerate(self.settings):
            for attribute, classes in zip(setting.attributes, setting.class_lists(), strict=True):
                for name, role in roles.items():
                    declared = (vocabularies[name] or {}).get(attribute)
                    if declared is not None and list(declared) != list(classes):
                        raise LocatedError(("settings", i), _class_mismatch(attribute, classes, name, role, declared))
            evaluators = [vocabularies[n] for n in self.labelers]
            if evaluators and all(v is not None for v in evaluators) \
                    and not any(all(a in v for a in setting.attributes) for v in evaluators):
                said = "; ".join(f"{n} labels {', '.join(v) or 'nothing'}" for n, v in zip(self.labelers, evaluators,
                                                                                           strict=True))
                raise LocatedError(("settings", i), f"no evaluation labeler labels {' x '.join(setting.attributes)} "
                                                    f"({said}); add one that does to labelers")
            for name, where in method_labelers.items():
                missing = [a for a in setting.attributes if a not in (vocabularies[name] or setting.attributes)]
                if missing:
                    labels = ", ".join(vocabularies[name])
                    raise LocatedError(("settings", i), f"{where} guides with labeler {name}, which does not label "
                                                        f"{', '.join(missing)} (it labels {labels})")
        return self

    def phrase(self, attribute: str, cls: str) -> str:
        if attribute in self.phrases and cls in self.phrases[attribute]:
            return self.phrases[attribute][cls]
        if attribute in ATTRIBUTE_PHRASES and cls in ATTRIBUTE_PHRASES[attribute]:
            return ATTRIBUTE_PHRASES[attribute][cls][0]
        return f"with {cls} {attribute.replace('_', ' ')}"

    def class_phrases(self, setting: SettingSpec) -> list[str]:
        """The text that names each joint class of the setting, as appended to a prompt
        ("with dark skin and with glasses")."""
        return [" and ".join(self.phrase(a, c) for a, c in zip(setting.attributes, combo.split("&"), strict=True))
                for combo in setting.joint_classes()]


def _class_mismatch(attribute: str, classes: list[str], labeler: str, role: str, declared: list[str]) -> str:
    """What to write when a setting's classes differ from a labeler's."""
    theirs = ", ".join(declared)
    if sorted(classes) == sorted(declared):
        return (f"{attribute} classes [{', '.join(classes)}] are not in the order {role} {labeler} labels them; "
                f"write classes: {{{attribute}: [{theirs}]}} (a target given as a mapping is matched by class name, "
                "one given as a list follows this order)")
    return (f"{role} {labeler} labels {attribute} as [{theirs}], not [{', '.join(classes)}]; write classes: "
            f"{{{attribute}: [{theirs}]}} or use a labeler with these classes")


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
    # The seeds of a cell whose images exist (images:DIR), in metadata order; None: seed + i.
    image_seeds: list[int] | None = None

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
    def method_class(self):
        return resolve(METHODS, self.method.name, "method")

    @property
    def images_setting(self) -> object:
        """What of the attribute setting the method's images depend on (Method.images_setting)."""
        return self.method_class.images_setting(method_params(self.method.name, self.method.params), self.setting)

    @property
    def shares_images(self) -> bool:
        """Whether the images depend on less than the whole attribute setting (unguided sampling
        on none of it), so cells that differ only in the rest share one set of generated images."""
        return self.images_setting != self.setting.model_dump()

    @property
    def image_key(self) -> str:
        """Everything that decides the images of a cell that shares them: all but its setting,
        and of the setting what the method reads."""
        return json.dumps([self.model.identity(), self.method.model_dump(), self.prompt, self.samples,
                           self.batch_size, self.seed, self.images_setting], sort_keys=True)

    @property
    def seeds(self) -> list[int]:
        """Image i uses seed + i in every cell of the suite, so methods compare on the same noise.
        `samples` is not part of the cell id: a cell that grows or shrinks keeps its directory,
        and the runner keeps only the images still generated as a fresh run would make them.
        A cell of finished images (images:DIR) has the seeds its folder gives them."""
        if self.image_seeds is not None:
            return list(self.image_seeds)
        return list(range(self.seed, self.seed + self.samples))

    @property
    def batch_coupled(self) -> bool:
        """Whether an image depends on the other samples of its batch (guidance), so the batch
        size is part of the cell and a batch is generated, kept or regenerated as a whole."""
        return self.method_class.couples_batch

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


class SuiteLoader(yaml.SafeLoader):
    """YAML as a suite means it. PyYAML reads YAML 1.1, where unquoted no/yes/on/off (and
    true/false) are booleans: `target: {no: 0.7, yes: 0.3}` and `classes: {eyeglasses: [no, yes]}`
    (the zoo's eyeglasses and smile classes) would name classes False and True. So a mapping key
    or a list item is read as the word written; a value after `key:` stays a boolean
    (`normalize: no` is False). A key written twice is an error, not a silent override."""

    def compose_node(self, parent, index):
        node = super().compose_node(parent, index)
        is_name = isinstance(parent, yaml.SequenceNode) or (isinstance(parent, yaml.MappingNode) and index is None)
        if is_name and isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            node.tag = "tag:yaml.org,2002:str"
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                if key.value in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key.value!r} appears twice (first on line {first[key.value]}); "
                        "keep one", key.start_mark)
                first[key.value] = key.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(path: Path):
    """The YAML document in `path` (SuiteLoader), or a one-line SuiteError."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SuiteError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                         "save the suite file as UTF-8") from None
    except OSError as e:
        raise SuiteError(f"{path}: cannot read the suite file: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=SuiteLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SuiteError(f"{path}:{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise SuiteError(f"{path}: invalid YAML: nested too deeply") from None


def load_suite(path: str | Path, samples: int | None = None) -> Suite:
    """Parse and validate a suite file; every problem becomes a one-line SuiteError."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite must be a YAML mapping with keys name, models, methods, settings")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as e:
        # an unknown key first: a misspelt key explains the required one it left missing
        err = _union_error(sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden"))
        message = err["msg"].removeprefix("Value error, ")
        located = (err.get("ctx") or {}).get("error")
        if isinstance(located, LocatedError):
            err = {**err, "loc": (*err["loc"], *located.loc)}
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            model = _model_at(parent)
            allowed = ", ".join(model.model_fields) if model else ""
            message = f"unknown key {err['loc'][-1]!r}" + (f"; allowed: {allowed}" if allowed else "")
        elif err["type"] == "missing":
            message = _missing_message(err["loc"]) or message
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
            try:
                lines = [ln.strip() for ln in prompt_path.read_bytes().decode("utf-8-sig").splitlines()]
            except UnicodeDecodeError:
                raise SuiteError(f"{path}: models[{i}].prompts_file: {model.prompts_file} is not UTF-8 text; "
                                 "save it as UTF-8") from None
            model.prompts = (model.prompts or []) + [ln for ln in lines if ln and not ln.startswith("#")]
            if model.finished_images:
                try:
                    model.check_folder_prompts()
                except ValueError as e:
                    raise SuiteError(f"{path}: models[{i}].prompts_file: {e}") from None
    if samples is not None:
        if samples < 1:
            raise SuiteError(f"--n must be a positive number of samples per cell, got {samples}")
        suite.samples = samples
    return suite


def _missing_message(loc: tuple) -> str | None:
    """What to write for a required key the suite left out that a model's source could have named
    (None: pydantic's own words)."""
    if loc == ("labelers",):
        return (f"required: name the evaluation labelers (no model's source names default ones); registered: "
                f"{', '.join(sorted(LABELERS))}")
    if loc[:1] == ("fid",) and loc[-1] in ("extractor", "reference"):
        return (f"required (no model's source names an FID for its world): give {loc[-1]} "
                f"({FidSpec.model_fields[loc[-1]].description.split(';')[0]})")
    return None


def _union_error(errors: list[dict]) -> dict:
    """The first error, where a value failed every member of a union (target: 'uniform', a
    list or a mapping) said as one: the member the value's shape matched (its error lies deeper),
    else every member's expectation in one message; the members' tags leave the location."""
    err = errors[0]
    tag = next((k for k, part in enumerate(err["loc"]) if isinstance(part, str) and "[" in part), None)
    if tag is None:
        return err
    prefix = err["loc"][:tag]
    members = [x for x in errors if x["loc"][:tag] == prefix and len(x["loc"]) > tag]
    deepest = max(members, key=lambda x: len(x["loc"]))
    if len(deepest["loc"]) > tag + 1:
        return {**deepest, "loc": (*prefix, *deepest["loc"][tag + 1:])}
    wants = " or ".join(dict.fromkeys(x["msg"].removeprefix("Input should be ") for x in members))
    return {**err, "loc": prefix, "type": "union", "msg": f"Input should be {wants} (got {err.get('input')!r})"}


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
        finished = model.finished_images
        if finished:
            samples = _folder_samples(model, suite.samples)
            prompts, is_text = list(samples), True
        else:
            is_text = _is_text_model(model)
            prompts = (model.prompts or [DEFAULT_PROMPT]) if is_text else [None]
        for method in suite.methods:
            method_class = resolve(METHODS, method.name, "method")
            for setting in suite.settings:
                for prompt in prompts:
                    if finished:  # a folder's images: as many as it has (up to samples), seeded by the folder
                        reason = finished if method_class.acts_on_sampling else None
                        size = {"samples": len(samples[prompt]), "image_seeds": samples[prompt]}
                    else:
                        reason, size = method_class.not_applicable_to(is_text), {"samples": suite.samples}
                    cells.append(Cell(model=model, method=method, setting=setting, prompt=prompt,
                                      batch_size=suite.batch_size, seed=suite.seed, skip_reason=reason, **size))
    return cells


def _folder_samples(model: ModelSpec, samples: int) -> dict[str, list[int]]:
    """prompt -> the seeds of its cell's images: the first `samples` of the prompt's images in
    metadata order, or all of them when it has fewer (the cell's n says how many), for the
    prompts the entry selects (default: every prompt of the folder, in first-seen order)."""
    from audit.image_folder import read_folder

    folder = read_folder(model.source)
    return {prompt: [image.seed for image in folder.of_prompt(prompt)[:samples]]
            for prompt in (model.prompts or folder.prompts())}


def _is_text_model(model: ModelSpec) -> bool:
    """Whether the model is text-conditioned, known without loading it: a model that is not on
    this machine (a dry run) or a custom one is a text model when the suite gives it prompts."""
    from audit.sources import ModelNotAvailable, is_text_model

    if model.source.startswith("custom:"):
        return bool(model.prompts or model.prompts_file)
    try:
        return is_text_model(model.source, model.revision)
    except ModelNotAvailable:
        return bool(model.prompts or model.prompts_file)


def agreed_source_defaults(models) -> dict:
    """The suite defaults (ModelSource.suite_defaults) every model of a suite's raw `models` list
    agrees on; {} when a model's source names none or the list cannot be read yet (the field
    validators then say what is wrong with it)."""
    if not isinstance(models, list) or not models:
        return {}
    each = []
    for model in models:
        source = model.get("source") if isinstance(model, dict) else getattr(model, "source", None)
        owner = model_source(source) if isinstance(source, str) else None
        if owner is None:
            return {}
        try:
            each.append(owner[0].suite_defaults(owner[1]))
        except (KeyError, ValueError):  # an unknown name: the source validator reports it
            return {}
    return {key: value for key, value in each[0].items() if all(d.get(key) == value for d in each[1:])}
