"""Where a suite's models are on disk, read without loading them (no torch here): a source string
resolved to a diffusers directory, whether that model is text-conditioned, and content hashes
that identify weights, so probes, calibrations and images made from other weights are never reused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from audit.plugins import ModelNotAvailable
from audit.registry import model_source

IMAGES = "images:"  # a folder of finished images (audit.image_folder, which builds on this module)


def resolve_source(source: str, revision: str | None = None,
                   download_hint: Callable[[str], str | None] | None = None) -> tuple[Path, str]:
    """(local directory, model id) for a source string. `download_hint(repo)` may add what a known
    repository's download needs (size, licence gate) to the message for a missing hf: model. For
    images:DIR, the folder (read and checked by audit.image_folder)."""
    if source.startswith(IMAGES):
        return Path(source[len(IMAGES):]).expanduser(), source
    owner = model_source(source)
    if owner is not None:
        return owner[0].resolve(owner[1], revision)
    if source.startswith("hf:"):
        repo = source[3:]
        from huggingface_hub import constants, snapshot_download

        try:
            path = snapshot_download(repo, revision=revision, local_files_only=True)
        except Exception:
            hint = f" --revision {revision}" if revision else ""
            known = download_hint(repo) if download_hint else None
            raise ModelNotAvailable(
                f"{repo}{hint.replace(' --revision', ' at revision')} is not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}): run `hf download {repo}{hint}` on a machine with internet "
                f"({known or 'log in first for gated models: `hf auth login`'}) and copy the cache here (or point "
                f"HF_HUB_CACHE at it), or set the model's source to a local diffusers directory") from None
        return Path(path), repo
    path = Path(source).expanduser()
    if not (path / "model_index.json").is_file():
        raise ModelNotAvailable(f"{path} is not a diffusers model directory (no model_index.json); "
                                "save one with pipeline.save_pretrained(DIR) or use hf:ORG/REPO")
    return path, str(path)


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

        from audit.files import atomic_write_bytes

        with suppress(OSError):  # a read-only home: hash again next run
            atomic_write_bytes(cached, value.encode())
    return value


def is_text_model(source: str, revision: str | None = None) -> bool:
    """Whether the model at `source` has a text encoder (model_index.json); ModelNotAvailable when
    it is not on this machine. An image folder's cells are per prompt: a text model."""
    if source.startswith(IMAGES):
        return True
    owner = model_source(source)
    said = owner[0].is_text_model(owner[1]) if owner else None
    if said is not None:
        return said
    index = resolve_source(source, revision)[0] / "model_index.json"
    return "text_encoder" in json.loads(index.read_text())
