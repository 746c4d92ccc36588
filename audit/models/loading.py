"""Resolve a suite's model source (zoo:NAME, a local directory, hf:ORG/REPO) to an adapter,
offline: a model that is not on disk gives one line saying how to provide it."""

from __future__ import annotations

from pathlib import Path

import torch

from audit.models.adapter import ModelAdapter

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelNotAvailable(FileNotFoundError):
    pass


class PickledWeights(ModelNotAvailable):
    """A model whose weights are pickles only, and the suite did not opt in to loading them."""


WEIGHT_PARTS = ("unet", "text_encoder", "text_encoder_2", "vae")  # the parts ModelAdapter.from_directory loads
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
    path, _ = resolve_source(spec.source, spec.revision)
    check_weight_format(spec, path)


def resolve_source(source: str, revision: str | None = None) -> tuple[Path, str]:
    """(local directory, model id) for a source string."""
    if source.startswith("zoo:"):
        from audit.zoo import is_trained, zoo_path

        name = source[4:]
        if not is_trained(name):
            raise ModelNotAvailable(f"zoo model {name} has no weights in this install: "
                                    f"run `diffaudit zoo train {name}`")
        return zoo_path(name), source
    if source.startswith("hf:"):
        repo = source[3:]
        from huggingface_hub import constants, snapshot_download

        try:
            path = snapshot_download(repo, revision=revision, local_files_only=True)
        except Exception:
            hint = f" --revision {revision}" if revision else ""
            raise ModelNotAvailable(
                f"{repo}{hint.replace(' --revision', ' at revision')} is not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}): run `hf download {repo}{hint}` on a machine with internet (log in "
                f"first for gated models: `hf auth login`) and copy the cache here (or point HF_HUB_CACHE at it), "
                f"or set the model's source to a local diffusers directory") from None
        return Path(path), repo
    path = Path(source).expanduser()
    if not (path / "model_index.json").is_file():
        raise ModelNotAvailable(f"{path} is not a diffusers model directory (no model_index.json); "
                                "save one with pipeline.save_pretrained(DIR) or use zoo:NAME / hf:ORG/REPO")
    return path, str(path)


def load_model(spec, device: str = "cpu") -> ModelAdapter:
    """The adapter for a suite's model spec; incomplete weights give one ModelNotAvailable line."""
    if spec.source.startswith("custom:"):
        from audit.registry import MODELS, resolve

        adapter = resolve(MODELS, spec.source[7:], "model")(device=device, dtype=DTYPES[spec.dtype])
        adapter.revision = spec.revision or adapter.revision
        return adapter
    path, model_id = resolve_source(spec.source, spec.revision)
    check_weight_format(spec, path)
    try:
        adapter = ModelAdapter.from_directory(path, model_id=model_id, device=device, dtype=DTYPES[spec.dtype],
                                              scheduler=spec.scheduler, variant=spec.variant, memory=spec.memory,
                                              allow_pickle=spec.allow_pickle)
    except OSError as error:
        detail = " ".join(str(error).split())[:200]
        variant = f" (variant {spec.variant!r}: are its *.{spec.variant}.* weight files there?)" if spec.variant else ""
        raise ModelNotAvailable(f"{model_id}: incomplete model at {path}{variant}: {detail}; download the whole "
                                "model (`hf download REPO`, `hf auth login` first for gated models) or save a complete "
                                "pipeline with pipeline.save_pretrained(DIR)") from None
    # For the HF cache the snapshot folder is the commit: the manifest records what was audited.
    adapter.revision = path.name if spec.source.startswith("hf:") else spec.revision
    if spec.source.startswith("zoo:"):
        adapter.revision = zoo_revision(path)
    return adapter


def zoo_revision(path: Path) -> str:
    """A zoo model's revision: its training step and a hash of its UNet weights, so probes and
    caches made for other weights of the same name are recognised as stale."""
    import hashlib
    import json

    steps = json.loads((path / "training.json").read_text()).get("steps", "?")
    digest = hashlib.sha256()
    for weights in sorted((path / "unet").glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return f"step{steps}-{digest.hexdigest()[:10]}"
