"""Name -> factory registries for models, methods, labelers and FID extractors.

Entries are "module:attribute" strings imported on first use, so optional backends (onnx,
deepface, CLIP) cost nothing until a suite names them. `register_*` adds user components.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

LABELERS: dict[str, str | Callable] = {
    "synthfaces-eval": "audit.labelers.synthfaces:SynthFacesLabeler",
    "synthfaces-pseudo": "audit.labelers.synthfaces:SynthFacesLabeler",
    "synthfaces-clip": "audit.labelers.synthfaces_clip:SynthFacesClipLabeler",
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
}


# Models a suite names as `source: custom:NAME`; factory(device: str, dtype: torch.dtype) -> ModelAdapter.
MODELS: dict[str, Callable] = {}


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
    at that default, so adding an option does not invalidate every earlier cell and calibration."""
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a registered callable without a signature: params as written
        return dict(params)
    defaults = {key: p.default for key, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}
    effective = {**defaults, **params}
    for key in getattr(factory, "ADDED_OPTIONS", ()):
        if key in effective and effective[key] == defaults.get(key):
            del effective[key]
    return effective


def method_params(name: str, params: dict) -> dict:
    return effective_params(resolve(METHODS, name, "method"), params)


def make_labeler(name: str, **options):
    """Instantiate a registered labeler; zoo labelers get their zoo name."""
    factory = resolve(LABELERS, name, "labeler")
    if name.startswith("synthfaces-"):
        return factory(name=name, **options)
    return factory(**options)


def register_labeler(name: str, factory: Callable) -> None:
    LABELERS[name] = factory


def register_method(name: str, factory: Callable) -> None:
    METHODS[name] = factory


def register_model(name: str, factory: Callable) -> None:
    """Make `source: custom:NAME` load `factory(device=..., dtype=...)`, which returns a ModelAdapter."""
    MODELS[name] = factory
