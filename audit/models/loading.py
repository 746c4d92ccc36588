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
            from audit.models.families import download_hint

            hint = f" --revision {revision}" if revision else ""
            known = download_hint(repo)
            raise ModelNotAvailable(
                f"{repo}{hint.replace(' --revision', ' at revision')} is not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}): run `hf download {repo}{hint}` on a machine with internet "
                f"({known or 'log in first for gated models: `hf auth login`'}) and copy the cache here (or point "
                f"HF_HUB_CACHE at it), or set the model's source to a local diffusers directory") from None
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
                                              allow_pickle=spec.allow_pickle, hspace=getattr(spec, "hspace", None),
                                              hspace_pool=getattr(spec, "hspace_pool", None))
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
    the zoo's step and UNet hash, a local directory's content hash. Probes, calibrations and a
    cell's images are keyed on it, so weights retrained in place are never mistaken for the old.
    Custom models (None here) report their own on the adapter."""
    if spec.source.startswith("custom:"):
        return spec.revision
    if path is None:
        path = resolve_source(spec.source, spec.revision)[0]
    if spec.source.startswith("hf:"):
        return path.name
    if spec.source.startswith("zoo:"):
        return zoo_revision(path)
    return local_revision(path)


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


def local_revision(path: Path) -> str:
    """A local diffusers directory's revision: a hash of the content of every file of
    model_index.json's components (weights, whether safetensors or bin, configs, tokenizers)."""
    import hashlib
    import json

    path = Path(path)
    index = json.loads((path / "model_index.json").read_text())
    files = [path / "model_index.json"]
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or (entry + [None])[1] is None:
            continue
        if (path / name).is_dir():
            files += sorted(f for f in (path / name).iterdir() if f.is_file() and not f.name.startswith("."))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(path).as_posix()}\0{file_digest(f)}\0".encode())
    return f"content-{digest.hexdigest()[:12]}"


def directory_digest(path: Path) -> str:
    """sha256 over the names and contents of every non-hidden file under `path` (a labeler's or
    CLIP's weights directory), or of the file itself."""
    import hashlib

    path = Path(path)
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        digest.update(f"{f.relative_to(path).as_posix()}\0{file_digest(f)}\0".encode())
    return digest.hexdigest()


_DIGESTS: dict[str, str] = {}
CACHED_FROM_BYTES = 16 << 20  # files this large keep their hash on disk between runs


def hash_cache_dir() -> Path:
    """Where the hashes of large weight files are kept: $DIFFAUDIT_CACHE/hashes (default
    ~/.cache/diffaudit/hashes)."""
    import os

    return Path(os.environ.get("DIFFAUDIT_CACHE") or Path.home() / ".cache" / "diffaudit") / "hashes"


def file_digest(path: Path) -> str:
    """sha256 of a file's content, read in chunks (memory stays flat for multi-GB weights).
    Cached by (path, size, mtime, ctime, inode): in this process for every file, on disk for files
    of 16 MiB or more, so a multi-GB model is hashed once, not at every run. Rewriting a file in
    place changes its mtime and ctime, so retrained weights are hashed again."""
    import hashlib

    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    if key in _DIGESTS:
        return _DIGESTS[key]
    cached = hash_cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.sha256"
    if st.st_size >= CACHED_FROM_BYTES and cached.is_file():
        value = cached.read_text().strip()
        if len(value) == 64:
            _DIGESTS[key] = value
            return value
    with open(path, "rb") as f:
        value = hashlib.file_digest(f, "sha256").hexdigest()
    _DIGESTS[key] = value
    if st.st_size >= CACHED_FROM_BYTES:
        from contextlib import suppress

        from audit.store import atomic_write_bytes

        with suppress(OSError):  # a read-only home: hash again next run
            atomic_write_bytes(cached, value.encode())
    return value
