"""Model families behind one interface (audit.models.families.base.Family), one file each; the
family of a diffusers directory is chosen from its model_index.json."""

from __future__ import annotations

from audit.models.families.base import Conditioning, Family
from audit.models.families.flux import FluxFamily
from audit.models.families.pixart import PixArtFamily
from audit.models.families.sd import SDFamily
from audit.models.families.sd3 import SD3Family
from audit.models.families.sdxl import SDXLFamily
from audit.models.families.unet2d import UNet2DFamily
from audit.spec import SuiteError

# Tried in this order: the most specific first (an SDXL index also has SD's parts).
FAMILIES: tuple[type[Family], ...] = (SD3Family, FluxFamily, PixArtFamily, SDXLFamily, SDFamily, UNet2DFamily)


class UnsupportedPipeline(SuiteError):
    """A diffusers directory of a pipeline no family serves: one line, exit 2."""


def family_for(index: dict, where: str = "") -> type[Family]:
    """The family serving a model_index.json, or UnsupportedPipeline naming what is supported."""
    for family in FAMILIES:
        if family.matches(index):
            return family
    served = ", ".join(p for f in FAMILIES for p in f.pipelines)
    raise UnsupportedPipeline(f"{where or 'model'}: {index.get('_class_name')} is not a supported pipeline; "
                              f"supported: {served}, and any pipeline with a UNet (or register a ModelAdapter "
                              "factory and use source: custom:NAME)")


def family_of_parts(adapter) -> Family:
    """The UNet family of an adapter built from parts (ModelAdapter(unet=..., ...))."""
    unet = adapter.unet
    if adapter.text_encoder_2 is not None or getattr(unet.config, "addition_embed_type", None) == "text_time":
        return SDXLFamily()
    return SDFamily() if adapter.text_encoder is not None else UNet2DFamily()


def download_hint(repo: str) -> str | None:
    """What to know about downloading a known family's repository (size, licence gate)."""
    for family in FAMILIES:
        if repo in family.downloads:
            return family.downloads[repo]
    return None


__all__ = ["FAMILIES", "Conditioning", "Family", "UnsupportedPipeline", "download_hint", "family_for",
           "family_of_parts"]
