"""The plug-in interface: what a package adds to diffaudit, and how diffaudit finds it.

A plug-in is a function `register(registry)` published under the `diffaudit.plugins` entry-point
group of its package's metadata:

    [project.entry-points."diffaudit.plugins"]
    mymodels = "mypackage.diffaudit_plugin:register"

diffaudit calls it once, when `audit.registry` is first imported, with the `audit.registry` module;
it calls `register_method`, `register_labeler`, `register_source`, `register_fid_extractor`,
`register_reference`, `register_attributes` or `register_command`. The bundled SynthFaces zoo is
such a plug-in (audit/zoo/plugin.py): the core names none of its parts.

This module holds the two interfaces a plug-in implements as classes (ModelSource and
ReferenceImages) and the loader. It imports nothing heavy: suites are checked before torch loads.
"""

from __future__ import annotations

import warnings
from pathlib import Path

ENTRY_POINT_GROUP = "diffaudit.plugins"


class ModelNotAvailable(FileNotFoundError):
    """A model whose weights are not on this machine; the message says how to get them."""


class ModelSource:
    """Where the models a suite names as `source: PREFIX:NAME` come from (register_source(PREFIX, ...)).

    `resolve` is the only method a source must implement; every other answers "nothing to add" by
    default. What a source knows about its own models (their sampler, the labelers and FID that
    suit them, probes and calibrations it ships) reaches the core only through these methods."""

    description: str = ""

    def names(self) -> list[str]:
        """The models this source offers (for error messages and docs); [] when open-ended."""
        return []

    def check(self, name: str) -> None:
        """Raise ValueError naming what is allowed when `name` is not a model of this source.
        Called when the suite loads, so it must not load weights."""

    def resolve(self, name: str, revision: str | None) -> tuple[Path, str]:
        """(diffusers directory, model id) of model `name`; ModelNotAvailable saying how to get it."""
        raise NotImplementedError

    def revision(self, name: str, path: Path) -> str | None:
        """What identifies the weights at `path` (probes, calibrations and images are keyed on it);
        None: the core hashes the directory's content."""
        return None

    def is_text_model(self, name: str) -> bool | None:
        """Whether the model is text-conditioned; None: read its model_index.json."""
        return None

    def model_defaults(self, name: str) -> dict:
        """Values for the suite's model entry where the suite leaves them unset (e.g. {"eta": 1.0}:
        the sampler the model was made for)."""
        return {}

    def suite_defaults(self, name: str) -> dict:
        """Suite keys (labelers, probe_labeler, fid) that fit this model when a suite leaves them
        out: used only when every model of the suite agrees on them."""
        return {}

    def shipped_probes(self, name: str, labeler: str) -> Path | None:
        """A directory of probes (one folder per attribute) shipped for the model's default prompt,
        trained with `labeler`'s pseudo-labels; None: probes are trained on demand."""
        return None

    def shipped_calibrations(self, name: str) -> Path | None:
        """A directory of `scale: auto` calibration records shipped for the model; None: none."""
        return None

    def clip_model(self, name: str) -> tuple[str, str] | None:
        """(path, name to report) of the CLIP that scores this model's prompts when a suite names
        no clip_model; None: no CLIP score unless the suite names one."""
        return None

    def seconds_per_image_step(self, name: str) -> float | None:
        """Measured sampling cost on one CPU core, for the dry run's time estimate; None: unknown."""
        return None


class ReferenceImages:
    """FID reference sets a suite names as `fid.reference: PREFIX:NAME` (register_reference):
    images drawn on demand (a procedural world) rather than read from a directory."""

    def names(self) -> list[str]:
        return []

    def images(self, name: str, n: int):
        """[n, 3, H, W] float images in [0, 1]; ValueError naming the allowed names."""
        raise NotImplementedError

    def can_match(self, attributes: list[str]) -> bool:
        """Whether `target_images` can draw the set with these attributes at a target distribution."""
        return False

    def target_images(self, name: str, attributes: list[str], target: list[float], n: int):
        """The reference set with the joint distribution of `attributes` replaced by `target`: what a
        perfect debiasing method would produce (FID to it charges guidance only for quality)."""
        raise NotImplementedError


def load_plugins(registry) -> list[str]:
    """Call every installed plug-in's register(registry); returns the names loaded. A plug-in that
    fails to load is skipped with a warning naming it (one broken package must not stop audits)."""
    from importlib.metadata import entry_points

    loaded = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            entry.load()(registry)
        except Exception as error:  # a third-party package's bug: name it and go on
            warnings.warn(f"diffaudit plug-in {entry.name} ({entry.value}) failed to load: {error}", stacklevel=2)
            continue
        loaded.append(entry.name)
    return loaded
