"""The SynthFaces zoo as a diffaudit plug-in, registered through the `diffaudit.plugins` entry
point like any third-party package (pyproject.toml): its models (`source: zoo:NAME`), labelers,
FID extractor and reference worlds, attribute vocabulary and the `diffaudit zoo` commands."""

from __future__ import annotations


def register(registry) -> None:
    from audit.zoo.references import SynthFacesWorlds
    from audit.zoo.source import ZooSource
    from audit.zoo.synthfaces import ATTRIBUTE_PHRASES, ATTRIBUTES

    registry.register_source("zoo", ZooSource())
    for name in ("synthfaces-eval", "synthfaces-pseudo"):
        registry.register_labeler(name, "audit.zoo.labelers:SynthFacesLabeler", name=name)
    registry.register_labeler("synthfaces-clip", "audit.zoo.labelers:SynthFacesClipLabeler", name="synthfaces-clip")
    registry.register_fid_extractor("synthfaces", "audit.zoo.fid:SynthFacesFeatures", _feature_dim)
    registry.register_reference("synthfaces", SynthFacesWorlds())
    registry.register_attributes(ATTRIBUTES, ATTRIBUTE_PHRASES)
    registry.register_command("zoo", "audit.zoo.cli:app")


def _feature_dim() -> int:
    from audit.zoo.fid import feature_dim

    return feature_dim()
