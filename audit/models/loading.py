"""Resolve a suite's model source (a local directory, hf:ORG/REPO, custom:NAME, or a plug-in's
PREFIX:NAME) to an adapter, offline: a model that is not on disk gives one line saying how to
provide it."""

from __future__ import annotations

from pathlib import Path

import torch

from audit.models.adapter import ModelAdapter
from audit.plugins import ModelNotAvailable
from audit.registry import model_source
from audit.sources import local_revision, resolve_source

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PickledWeights(ModelNotAvailable):
    """A model whose weights are pickles only, and the suite did not opt in to loading them."""


# The weight-bearing parts the families load (audit.models.families).
WEIGHT_PARTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weight_format(spec, path: Path) -> None:
    """Weights load from .safetensors only unless the suite's model sets allow_pickle: true:
    unpickling a .bin runs whatever code the file holds, so a downloaded or shared model could
    execute code on the auditor's machine. Checked before any model loads, so the one line names
    the file and the opt-in; loading itself also refuses pickles (use_safetensors)."""
    if spec.allow_pickle or not (path / "model_index.json").is_file():
        return
    import json

    index = json.loads((path / "model_index.json").read_text())
    for part in WEIGHT_PARTS:
        folder = path / part
        if (index.get(part) or [None])[0] is None or not folder.is_dir() or any(folder.glob("*.safetensors")):
            continue
        pickles = sorted(f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise PickledWeights(
                f"model {spec.name}: {pickles[0]} holds pickled weights (loading a pickle can run code hidden in it) "
                f"and {part}/ has no .safetensors; convert the model (load it where you trust it and "
                f"save_pretrained(DIR), which writes safetensors) or, if you trust the file, set allow_pickle: true "
                f"on model {spec.name} in the suite")


def preflight(spec) -> None:
    """What can fail about a model's weights before anything loads: present (ModelNotAvailable)
    and in an allowed format (PickledWeights). Run for every model before the first cell, so the
    second model's problem does not surface after the first model's cells were generated."""
    if spec.source.startswith("custom:"):
        return
    if spec.finished_images:  # an image folder: every listed image decodes
        from audit.image_folder import check_images_decode, read_folder

        check_images_decode(read_folder(spec.source), spec.source)
        return
    path, _ = resolve_weights(spec.source, spec.revision)
    check_weight_format(spec, path)


def resolve_weights(source: str, revision: str | None = None) -> tuple[Path, str]:
    """(local directory, model id) of a source (audit.sources.resolve_source); a missing hf: model
    of a known family names what its download needs (size, licence gate)."""
    from audit.models.families import download_hint

    return resolve_source(source, revision, download_hint=download_hint)


def load_model(spec, device: str = "cpu") -> ModelAdapter:
    """The adapter for a suite's model spec; incomplete weights give one ModelNotAvailable line."""
    if spec.source.startswith("custom:"):
        from audit.registry import MODELS, resolve

        adapter = resolve(MODELS, spec.source[7:], "model")(device=device, dtype=DTYPES[spec.dtype])
        adapter.revision = spec.revision or adapter.revision
        return adapter
    if spec.finished_images:
        from audit.models.image_folder import ImageFolderAdapter

        return ImageFolderAdapter(spec.source, device=device)
    path, model_id = resolve_weights(spec.source, spec.revision)
    check_weight_format(spec, path)
    try:
        adapter = ModelAdapter.from_directory(path, model_id=model_id, device=device, dtype=DTYPES[spec.dtype],
                                              scheduler=spec.scheduler, variant=spec.variant, memory=spec.memory,
                                              allow_pickle=spec.allow_pickle, hspace=spec.hspace,
                                              hspace_pool=spec.hspace_pool)
    except OSError as error:
        detail = " ".join(str(error).split())[:200]
        variant = f" (variant {spec.variant!r}: are its *.{spec.variant}.* weight files there?)" if spec.variant else ""
        raise ModelNotAvailable(f"{model_id}: incomplete model at {path}{variant}: {detail}; download the whole "
                                "model (`hf download REPO`, `hf auth login` first for gated models) or save a complete "
                                "pipeline with pipeline.save_pretrained(DIR)") from None
    adapter.revision = model_revision(spec, path)
    return adapter


def model_revision(spec, path: Path | None = None) -> str | None:
    """What identifies a model's weights, without loading them: the HF snapshot folder (the commit),
    what a plug-in's source says (e.g. a training step and a weights hash), else a local
    directory's content hash. Probes, calibrations and a
    cell's images are keyed on it, so weights retrained in place are never mistaken for the old.
    Custom models (None here) report their own on the adapter."""
    if spec.source.startswith("custom:"):
        return spec.revision
    if spec.finished_images:  # the content hash of the folder's metadata and images
        from audit.image_folder import read_folder

        return read_folder(spec.source).revision()
    if path is None:
        path = resolve_weights(spec.source, spec.revision)[0]
    if spec.source.startswith("hf:"):
        return path.name
    owner = model_source(spec.source)
    said = owner[0].revision(owner[1], path) if owner else None
    return said or local_revision(path)










