"""The adapter of an `images:DIR` model: "generating" an image reads it from the folder, so the
run's resume, store, labels and metrics handle finished images exactly as sampled ones."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from audit.image_folder import ImageFolder, load_image, read_folder


@dataclass
class Copied:
    """What ModelAdapter.generate returns, for images read rather than sampled."""

    images: list[torch.Tensor]  # [3, H, W] each, at the image's native size
    stats: dict = field(default_factory=dict)
    h: None = None


class ImageFolderAdapter:
    finished = True  # its images exist: nothing is sampled, so copying them costs no generation time
    conditional = True  # cells are per prompt
    scheduler = None

    def __init__(self, source: str, device: str = "cpu"):
        self.source, self.device = source, device
        self.folder: ImageFolder = read_folder(source)
        self.model_id = source
        self.revision = self.folder.revision()
        self.info = {"folder": str(self.folder.path.resolve()), "images": len(self.folder.images),
                     "prompts": len(self.folder.prompts()), "models": self.folder.models()}
        self._files = {(image.prompt, image.seed): image for image in self.folder.images}

    def source_images(self, prompt: str, seeds: list[int]) -> list[dict]:
        """Where each of a cell's images comes from: its metadata columns (`seed`: the one it is
        stored under), its file and its line in metadata.jsonl."""
        return [{**self._files[prompt, s].extra, "seed": int(s), "file_name": self._files[prompt, s].file_name,
                 "line": self._files[prompt, s].line} for s in seeds]

    def generate(self, seeds, prompts=None, method=None, **sampling) -> Copied:
        """The images of `seeds` under their `prompts`, read from the folder (sampling options are
        ignored: there is no sampler)."""
        if prompts is None or len(prompts) != len(seeds):
            raise ValueError("an image folder needs one prompt per seed")
        return Copied(images=[load_image(self.folder.path / self._files[p, int(s)].file_name)
                              for s, p in zip(seeds, prompts, strict=True)])
