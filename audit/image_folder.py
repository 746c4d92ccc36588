"""`source: images:DIR`: audit images made anywhere (a closed API model, a colleague's run, any
generator) from a folder in the Hugging Face imagefolder convention: the images plus a
`metadata.jsonl` with one JSON object per image, `file_name` and `prompt` required, `seed` and
`model` optional, any other column kept as it is (written to the manifest).

Such a model cannot sample: its cells are its prompts, only methods that do not act on sampling
apply (plain `none`), and "generating" a cell copies its images into the run (re-encoded as PNG),
so labels, every metric, the report and the leaderboard treat them as generated images. The folder
is read without torch; every problem is one line naming the file, the line and the fix, raised
before a run writes anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from audit.errors import SuiteError
from audit.sources import IMAGES as PREFIX
from audit.sources import file_digest

METADATA = "metadata.jsonl"
RECIPE = "docs/image-folders.md"
# What a model entry sets only for models that sample: an image folder refuses them when written.
SAMPLING_FIELDS = ("revision", "allow_pickle", "steps", "guidance_scale", "negative_prompt", "dtype", "scheduler",
                   "variant", "memory", "eta")


class ImageFolderError(SuiteError):
    """A folder that cannot be audited; the message is one line naming the problem and the fix."""


def is_image_folder(source: str) -> bool:
    return source.startswith(PREFIX)


def folder_path(source: str) -> Path:
    """The directory of `images:DIR` (relative to the working directory, like a local model)."""
    return Path(source[len(PREFIX):]).expanduser()


@dataclass(frozen=True)
class FolderImage:
    """One line of metadata.jsonl: `line` is its line number in the file (1-based), `row` its
    position among the images (0-based), `seed` the seed the image is stored under."""

    line: int
    row: int
    file_name: str
    prompt: str
    seed: int
    size: tuple[int, int]
    extra: dict = field(default_factory=dict)  # every other column, `seed` and `model` included


@dataclass(frozen=True)
class ImageFolder:
    path: Path
    images: tuple[FolderImage, ...]
    seed_rules: dict[str, str]  # prompt -> how its images got their seeds

    def prompts(self) -> list[str]:
        """The prompts in the order metadata.jsonl first names them."""
        return list(dict.fromkeys(image.prompt for image in self.images))

    def of_prompt(self, prompt: str) -> list[FolderImage]:
        """The prompt's images in metadata order (a cell of n samples takes the first n)."""
        return [image for image in self.images if image.prompt == prompt]

    def files(self) -> list[Path]:
        return [self.path / image.file_name for image in self.images]

    def revision(self) -> str:
        """A content hash of the names and bytes of metadata.jsonl and of every listed image: the
        model revision of the folder's cells, so an edited folder supersedes the cells made from
        it (the runner moves them to OUT/superseded/)."""
        digest = hashlib.sha256()
        for name in [METADATA, *sorted(image.file_name for image in self.images)]:
            digest.update(f"{name}\0{file_digest(self.path / name)}\0".encode())
        return f"content-{digest.hexdigest()[:12]}"

    def models(self) -> list[str]:
        """The generators metadata.jsonl names in its `model` column (for the manifest)."""
        return sorted({str(image.extra["model"]) for image in self.images if image.extra.get("model") is not None})


def read_folder(source: str) -> ImageFolder:
    """The folder of `source` (images:DIR), checked: metadata.jsonl present, every line a JSON
    object with a non-empty `file_name` and `prompt` (and a whole-number `seed`, when given),
    every listed file inside DIR, listed once, present and an image PIL can identify, one image
    size per prompt (a cell's images are labelled as one batch), at least one image. Raises
    ImageFolderError (one line) otherwise. Reads image headers only: see `check_images_decode`."""
    path = folder_path(source)
    where = source[len(PREFIX):]
    if not path.is_dir():
        raise ImageFolderError(f"{source}: no such folder {where} (a path relative to the directory diffaudit runs "
                               f"in, or absolute); see {RECIPE} for what it holds")
    metadata = path / METADATA
    if not metadata.is_file():
        raise ImageFolderError(f"{source}: no {METADATA} in {where}; write one JSON line per image, e.g. "
                               f'{{"file_name": "0001.png", "prompt": "a photo of a doctor"}} (see {RECIPE})')
    try:
        lines = metadata.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ImageFolderError(f"{source}: {METADATA} is not UTF-8 text; save it as UTF-8") from None
    records, first_line = [], {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        at = f"{source}: {METADATA} line {number}"
        record = _record(at, text)
        name = record["file_name"]
        if name in first_line:
            raise ImageFolderError(f"{at}: file_name {name!r} is listed twice (first on line {first_line[name]}); "
                                   "list each image once")
        first_line[name] = number
        file = _inside(at, path, name)
        if not file.is_file():
            raise ImageFolderError(f"{at}: {name} is not in {where}; copy the image there or remove the line")
        records.append((number, record, _image_size(at, file)))
    if not records:
        raise ImageFolderError(f"{source}: {METADATA} lists no images; add one line per image (see {RECIPE})")
    seeds, rules = _seeds(records)
    images = tuple(FolderImage(line=number, row=row, file_name=record["file_name"], prompt=record["prompt"],
                               seed=seeds[row], size=size,
                               extra={k: v for k, v in record.items() if k not in ("file_name", "prompt")})
                   for row, (number, record, size) in enumerate(records))
    folder = ImageFolder(path=path, images=images, seed_rules=rules)
    for prompt in folder.prompts():
        sizes = {}
        for image in folder.of_prompt(prompt):
            sizes.setdefault(image.size, image)
        if len(sizes) > 1:
            (a, first), (b, other) = list(sizes.items())[:2]
            raise ImageFolderError(
                f"{source}: the images of prompt {prompt!r} differ in size ({first.file_name} is {a[0]}x{a[1]}, "
                f"{other.file_name} {b[0]}x{b[1]}); a cell's images are labelled together: give each prompt's "
                "images one size (resize them, or give differently sized images their own prompt)")
    return folder


def check_images_decode(folder: ImageFolder, source: str) -> None:
    """Decode every listed image in full (read_folder reads headers only), so a truncated or
    corrupt file is refused before a run writes anything rather than when its cell is copied."""
    from PIL import Image

    for image in folder.images:
        try:
            with Image.open(folder.path / image.file_name) as opened:
                opened.load()
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... on damaged files
            raise ImageFolderError(f"{source}: {METADATA} line {image.line}: {image.file_name} is not a readable "
                                   f"image ({_short(error)}); replace the file or remove the line") from None


def load_image(path: Path):
    """An image file as [3, H, W] floats in [0, 1] at its native size, as RGB (the run stores it
    as PNG: a JPEG's decoded pixels are kept exactly, its alpha or palette are not)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def summary(source: str, samples: int | None, prompts: list[str] | None = None) -> str:
    """One line for the dry run: the folder, its images per prompt, and how many a cell of
    `samples` uses (None: not said)."""
    folder = read_folder(source)
    chosen = prompts or folder.prompts()
    counts = [len(folder.of_prompt(p)) for p in chosen]
    limit = samples or max(counts)  # None: every image, no note
    shown = "; ".join(f"{p!r}: {c}" + (f" (a cell uses the first {limit})" if c > limit else "")
                      for p, c in zip(chosen[:8], counts, strict=False))
    more = f"; and {len(chosen) - 8} more prompts" if len(chosen) > 8 else ""
    short = sum(c < limit for c in counts) if samples else 0
    note = f"; {short} of {len(chosen)} prompts have fewer than samples = {samples}: their cells use all they have" \
        if short else ""
    return (f"finished images in {source[len(PREFIX):]}, no generation: {sum(counts)} images for {len(chosen)} "
            f"prompts ({shown}{more}){note}")


def _record(at: str, text: str) -> dict:
    try:
        record = json.loads(text)
    except ValueError as error:
        raise ImageFolderError(f"{at}: not JSON ({_short(error)}); write one JSON object per line") from None
    if not isinstance(record, dict):
        raise ImageFolderError(f"{at}: a JSON {type(record).__name__}, not an object; write "
                               '{"file_name": ..., "prompt": ...} per line')
    for key in ("file_name", "prompt"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            said = "lacks" if key not in record else "has an empty or non-text"
            raise ImageFolderError(f"{at}: {said} {key!r}; every line needs file_name and prompt (text)")
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ImageFolderError(f"{at}: seed must be a whole number >= 0 (or left out), got {seed!r}")
    return record


def _inside(at: str, root: Path, name: str) -> Path:
    """root/name, refusing names that leave the folder (absolute, '..', symlinks out)."""
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or root.resolve() not in candidate.parents:
        raise ImageFolderError(f"{at}: file_name {name!r} points outside the folder; give a path relative to it")
    return candidate


_SIZES: dict[tuple, tuple[int, int]] = {}  # header reads, kept while the file is unchanged (plan() reads often)


def _image_size(at: str, file: Path) -> tuple[int, int]:
    from PIL import Image

    st = file.stat()
    key = (str(file), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key in _SIZES:
        return _SIZES[key]
    try:
        with Image.open(file) as image:
            _SIZES[key] = image.size
            return image.size
    except Exception as error:  # not an image PIL knows (UnidentifiedImageError), unreadable file
        raise ImageFolderError(f"{at}: {file.name} is not a readable image ({_short(error)}); replace the file "
                               "or remove the line") from None


def _seeds(records: list) -> tuple[list[int], dict[str, str]]:
    """Each image's seed: a prompt whose every image has a `seed`, all different, keeps them (a
    generator's seeds, when it reports them); any other prompt's images are numbered by their row
    (position among the images of metadata.jsonl), which is unique across the folder."""
    by_prompt: dict[str, list[int]] = {}
    for row, (_, record, _) in enumerate(records):
        by_prompt.setdefault(record["prompt"], []).append(row)
    seeds, rules = list(range(len(records))), {}
    for prompt, rows in by_prompt.items():
        given = [records[row][1].get("seed") for row in rows]
        if None not in given and len(set(given)) == len(given):
            for row, seed in zip(rows, given, strict=True):
                seeds[row] = seed
            rules[prompt] = "the seed metadata.jsonl gives"
        else:
            rules[prompt] = "its row in metadata.jsonl (0-based; seeds missing or repeated)"
    return seeds, rules


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__
