"""Name -> factory registries for methods, labelers, model sources, FID extractors and references.

Entries are "module:attribute" strings imported on first use, so optional backends (onnx,
deepface, CLIP) cost nothing until a suite names them. `register_*` adds components; installed
plug-ins (the `diffaudit.plugins` entry points, audit/plugins.py) call them when this module is
first imported, the bundled SynthFaces zoo among them.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LABELERS: dict[str, str | Callable] = {
    "age_gender": "audit.labelers.age_gender:AgeGenderLabeler",
    "nudenet": "audit.labelers.nudenet:NudeNetLabeler",
    "skin_tone": "audit.labelers.skin_tone:SkinToneLabeler",
    "deepface": "audit.labelers.deepface:DeepFaceLabeler",
    "clip_zeroshot": "audit.labelers.clip_zeroshot:ClipZeroShotLabeler",
}

METHODS: dict[str, str | Callable] = {
    "none": "audit.methods.base:NoGuidance",
    "prompt": "audit.methods.prompt:PromptDebiasing",
    "sample_guidance": "audit.methods.sample_guidance:SampleGuidance",
    "universal_guidance": "audit.methods.universal_guidance:UniversalGuidance",
    "distribution_guidance": "audit.methods.distribution_guidance:DistributionGuidance",
    "self_debias": "audit.methods.self_debias:SelfDebias",
    "prompt_projection": "audit.methods.prompt_projection:PromptProjection",
    "semantic_guidance": "audit.methods.semantic_guidance:SemanticGuidance",
}


# Constructor arguments a labeler's registration fixes (one class registered under several names).
LABELER_OPTIONS: dict[str, dict] = {}

# Models a suite names as `source: custom:NAME`; factory(device: str, dtype: torch.dtype) -> ModelAdapter.
MODELS: dict[str, Callable] = {}

# Model sources by prefix (`source: PREFIX:NAME`): audit.plugins.ModelSource instances.
SOURCES: dict[str, Any] = {}


@dataclass(frozen=True)
class FidExtractor:
    """A feature network FID and KID can use: `factory(weights)` (weighted) or `factory()` builds a
    torch module taking [N, 3, H, W] images in [0, 1]; `feature_dim` (an int, or a callable giving
    it without building the network) sizes the covariance."""

    factory: str | Callable
    feature_dim: int | Callable[[], int]
    weighted: bool = False  # its weights are a file the user supplies (fid.weights)

    def dim(self) -> int:
        return int(self.feature_dim() if callable(self.feature_dim) else self.feature_dim)


FID_EXTRACTORS: dict[str, FidExtractor] = {
    "mobilenet_v2": FidExtractor("audit.metrics.mobilenet:MobileNetFeatures", 1280),
    "inception": FidExtractor("audit.metrics.inception:InceptionFeatures", 2048, weighted=True),
}

# FID reference sets drawn on demand, by prefix (`fid.reference: PREFIX:NAME`):
# audit.plugins.ReferenceImages instances. Any other reference is a directory of images.
REFERENCES: dict[str, Any] = {}

# Attributes whose classes (in a labeler's order) and phrases suites may use without declaring
# them: {attribute: [classes]}, {attribute: {class: [phrases, first preferred]}}.
ATTRIBUTES: dict[str, list[str]] = {}
ATTRIBUTE_PHRASES: dict[str, dict[str, list[str]]] = {}

# Command groups plug-ins add to the CLI (`diffaudit NAME ...`): typer apps or "module:attribute".
COMMANDS: dict[str, str | Callable] = {}


def resolve(registry: dict[str, str | Callable], name: str, kind: str) -> Callable:
    if name not in registry:
        raise KeyError(f"unknown {kind} {name!r}; available: {', '.join(sorted(registry))}")
    entry = registry[name]
    if isinstance(entry, str):
        module, attribute = entry.split(":")
        entry = getattr(importlib.import_module(module), attribute)
    return entry


def effective_params(factory: Callable, params: dict) -> dict:
    """The factory's keyword defaults overlaid with the suite's params: what a cell actually ran
    with. Cell ids and calibration records hash this, so a changed default (say `stop`) never
    reuses results produced under the old one. Options a factory lists in `ADDED_OPTIONS` (added
    after results were published, their default reproducing the old behaviour) are left out while
    at that default, so adding an option does not invalidate every earlier cell and calibration.
    A factory's `suite_defaults` (what a suite that leaves a param out gets, where that differs
    from the constructor's default) count as its defaults."""
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a registered callable without a signature: params as written
        return dict(params)
    defaults = {key: p.default for key, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}
    defaults.update(getattr(factory, "suite_defaults", {}))
    effective = {**defaults, **params}
    for key in getattr(factory, "ADDED_OPTIONS", ()):
        if key in effective and effective[key] == defaults.get(key):
            del effective[key]
    return effective


def method_params(name: str, params: dict) -> dict:
    return effective_params(resolve(METHODS, name, "method"), params)


def _signature(factory: Callable):
    """The factory's signature with its annotations evaluated where they can be (a plug-in's
    annotation naming a type it imports only for type checkers is left a string: no check)."""
    import inspect

    try:
        return inspect.signature(factory, eval_str=True)
    except (TypeError, ValueError):  # a callable without a signature
        return None
    except Exception:  # an annotation that does not evaluate here
        return inspect.signature(factory)


def suite_params(factory: Callable) -> dict | None:
    """{name: (annotation, default)} of what a suite may write under a method's `params` (or a
    labeler's `labeler_options`): the factory's keyword arguments less those the runner fills in
    itself (`factory.supplied`), plus any the factory names in `suite_only` (a suite value the
    runner turns into an argument, e.g. universal guidance's labeler name), with the defaults of
    the factory's `suite_defaults` where it has them. None when the factory
    takes **kwargs or has no signature: anything goes."""
    import inspect

    signature = _signature(factory)
    if signature is None:
        return None
    supplied = set(getattr(factory, "supplied", ()))
    fields = {}
    for key, p in signature.parameters.items():
        if p.kind == p.VAR_KEYWORD:
            return None
        if key in supplied or p.kind == p.VAR_POSITIONAL:
            continue
        annotation = Any if p.annotation is p.empty or isinstance(p.annotation, str) else p.annotation
        default = getattr(factory, "suite_defaults", {}).get(key, p.default)
        fields[key] = (annotation, ... if default is inspect.Parameter.empty else default)
    return {**fields, **getattr(factory, "suite_only", {})}


def check_params(factory: Callable, params: dict, what: str) -> dict:
    """The params a suite gave `factory`, checked against its signature's names and annotations
    (types, Literal choices, Annotated ranges; strict, so YAML's "2" is not 2 and "no" is not
    False) and then by `factory.check_params` (cross-param rules). Returns every suite param's
    value, defaults filled in. Nothing is built, so this runs when the suite loads.
    A ValueError names the first bad param and what is allowed; `what` says whose params."""
    from pydantic import ValidationError

    model = _params_model(factory)
    if model is None:
        return dict(params)
    unknown = [key for key in params if key not in model.model_fields]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; allowed: {', '.join(model.model_fields) or 'none'}")
    try:
        values = dict(model.model_validate(params))
    except ValidationError as error:
        raise ValueError(_first_problem(error)) from None
    check = getattr(factory, "check_params", None)
    if check is not None:
        check(values)
    return values


@functools.cache
def _params_model(factory: Callable):
    """A strict pydantic model of the factory's suite params (None: anything goes), built once."""
    from pydantic import ConfigDict, create_model

    fields = suite_params(factory)
    if fields is None:
        return None
    return create_model(f"{getattr(factory, '__name__', 'factory')}Params",
                        __config__=ConfigDict(strict=True, arbitrary_types_allowed=True), **fields)


def _first_problem(error) -> str:
    """One line for the first bad param of a pydantic ValidationError: a union's alternatives
    are joined ("scale should be greater than 0 or 'auto' (got -3)")."""
    errors = error.errors()
    key = errors[0]["loc"][0] if errors[0]["loc"] else ""
    if errors[0]["type"] == "missing":
        return f"missing {key} (it has no default)"
    same = [e for e in errors if e["loc"][:1] == (key,)]
    wants = [e["msg"].removeprefix("Input should be ") for e in same]
    wanted = " or ".join(dict.fromkeys(wants))
    if all(e["msg"].startswith("Input should be") for e in same):
        return f"{key} should be {wanted} (got {same[0]['input']!r})"
    return f"{key}: {wanted}"


def check_method_params(name: str, params: dict) -> dict:
    """A suite's params for method `name` (see check_params)."""
    return check_params(resolve(METHODS, name, "method"), params, "param")


def make_labeler(name: str, **options):
    """Instantiate a registered labeler with the options its registration fixes and `options`."""
    factory = resolve(LABELERS, name, "labeler")
    return factory(**LABELER_OPTIONS.get(name, {}), **options)


def labeler_vocabulary(name: str, options: dict) -> dict[str, list[str]] | None:
    """{attribute: [classes in the labeler's order]} that labeler `name` built with `options`
    would label, read without loading its weights (the class's `vocabulary(options)`), after
    checking the options against its constructor (see check_params). None for a labeler that
    cannot say before it is built (a plug-in without `vocabulary`). ValueError on bad options."""
    factory = resolve(LABELERS, name, "labeler")
    values = {**check_params(factory, options, "option"), **LABELER_OPTIONS.get(name, {})}  # as make_labeler
    vocabulary = getattr(factory, "vocabulary", None)
    return None if vocabulary is None else vocabulary(values)


def register_labeler(name: str, factory: str | Callable, /, **fixed) -> None:
    """Make NAME usable as a labeler; `fixed` are constructor arguments of this registration (a
    class the factory declares in `supplied`, e.g. which of its trained networks to load)."""
    LABELERS[name] = factory
    LABELER_OPTIONS[name] = dict(fixed)


def register_method(name: str, factory: Callable) -> None:
    METHODS[name] = factory


def register_model(name: str, factory: Callable) -> None:
    """Make `source: custom:NAME` load `factory(device=..., dtype=...)`, which returns a ModelAdapter."""
    MODELS[name] = factory


BUILT_IN_SOURCES = ("hf", "custom", "images")  # a source without a registered prefix is a local directory


def register_source(prefix: str, source) -> None:
    """Make `source: PREFIX:NAME` resolve through `source` (an audit.plugins.ModelSource)."""
    if prefix in BUILT_IN_SOURCES or not prefix.isidentifier():
        raise ValueError(f"source prefix {prefix!r} is built in or not a plain name")
    SOURCES[prefix] = source


def model_source(source: str) -> tuple[Any, str] | None:
    """(the registered ModelSource, the name after its prefix) for a suite's `source`, or None
    when no plug-in owns its prefix (hf:, custom: and local directories are the core's)."""
    prefix, sep, name = source.partition(":")
    if sep and prefix in SOURCES:
        return SOURCES[prefix], name
    return None


def register_fid_extractor(name: str, factory: str | Callable, feature_dim: int | Callable[[], int],
                           weighted: bool = False) -> None:
    FID_EXTRACTORS[name] = FidExtractor(factory, feature_dim, weighted)


def register_reference(prefix: str, references) -> None:
    """Make `fid.reference: PREFIX:NAME` draw its images from `references` (audit.plugins.ReferenceImages)."""
    REFERENCES[prefix] = references


def reference_source(reference: str) -> tuple[Any, str] | None:
    """(the registered ReferenceImages, the name after its prefix), or None for a directory."""
    prefix, sep, name = reference.partition(":")
    if sep and prefix in REFERENCES:
        return REFERENCES[prefix], name
    return None


def register_attributes(classes: dict[str, list[str]], phrases: dict[str, dict[str, list[str]]] | None = None) -> None:
    """Attributes (with their classes and the phrases prompt debiasing writes) suites may name
    without declaring their classes."""
    ATTRIBUTES.update({a: list(c) for a, c in classes.items()})
    for attribute, by_class in (phrases or {}).items():
        ATTRIBUTE_PHRASES.setdefault(attribute, {}).update({c: list(p) for c, p in by_class.items()})


def register_command(name: str, app: str | Callable) -> None:
    """Add a command group to the CLI (`diffaudit NAME ...`): a typer.Typer or "module:attribute"."""
    COMMANDS[name] = app


def _load_plugins() -> list[str]:
    import sys

    from audit.plugins import load_plugins

    return load_plugins(sys.modules[__name__])


PLUGINS = _load_plugins()  # the names of the plug-ins installed and loaded
