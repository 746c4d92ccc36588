"""Resolve a suite's model source (zoo:NAME, a local directory, hf:ORG/REPO) to an adapter,
offline: a model that is not on disk gives one line saying how to provide it."""

from __future__ import annotations

from pathlib import Path

import torch

from audit.models.adapter import ModelAdapter

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelNotAvailable(FileNotFoundError):
    pass


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
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(repo, revision=revision, local_files_only=True)
        except Exception:
            hint = f" --revision {revision}" if revision else ""
            raise ModelNotAvailable(
                f"{repo} is not in the Hugging Face cache: run `hf download {repo}{hint}` on a machine with "
                f"internet (log in first for gated models: `hf auth login`), copy the cache here, or set the "
                f"model's source to a local diffusers directory") from None
        return Path(path), repo
    path = Path(source).expanduser()
    if not (path / "model_index.json").is_file():
        raise ModelNotAvailable(f"{path} is not a diffusers model directory (no model_index.json); "
                                "save one with pipeline.save_pretrained(DIR) or use zoo:NAME / hf:ORG/REPO")
    return path, str(path)


def load_model(spec, device: str = "cpu") -> ModelAdapter:
    path, model_id = resolve_source(spec.source, spec.revision)
    adapter = ModelAdapter.from_directory(path, model_id=model_id, device=device, dtype=DTYPES[spec.dtype])
    adapter.revision = spec.revision
    return adapter
