"""Safe file writing for everything diffaudit stores: atomic writes (a reader never sees half a
file, a kill never leaves one) and paths that cannot escape their root directory."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UnsafePathError(ValueError):
    pass


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write into; renamed onto `path` when the block ends, removed
    if it fails. Created as a plain open() would create it (0666 less the umask), not with
    mkstemp's 0600, which locked other users out of shared run directories and served reports."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=_json_default).encode())


def _json_default(o):
    if hasattr(o, "tolist"):  # numpy scalars and arrays, torch tensors
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def inside(root: Path, relative: str | Path) -> Path:
    """root/relative, refusing anything that resolves outside root (.., absolute, symlinks)."""
    root = root.resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise UnsafePathError(f"path {str(relative)!r} escapes the output directory {root}")
    return candidate
