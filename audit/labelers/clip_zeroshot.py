"""Zero-shot attribute labels from a local CLIP (transformers CLIPModel), and CLIP image-text
similarities (for the CLIP score).

Nothing is downloaded: `model_path` is a directory holding a saved CLIP (model, tokenizer,
image-processor config) or a Hugging Face model id already in the local cache; both load with
local_files_only=True, and a model that cannot be found raises one ClipModelNotFound error
(a FileNotFoundError) naming the path and how to provide it.

classes: {attribute: [class texts]} or {attribute: {class name: text or [texts]}}. Each class
text becomes one prompt per template (template.format(text)); without templates the texts are
the prompts verbatim. A class's embedding is the normalized mean of its normalized prompt
embeddings (CLIP's prompt ensembling), and the class probabilities are
softmax(logit_scale * cos(image, class)). Every image is valid: CLIP always answers.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from audit.labelers.base import Labeler, LabelResult, to_uint8_rgb


class ClipModelNotFound(FileNotFoundError):
    """The CLIP model is neither a local directory nor in the Hugging Face cache."""

    def __init__(self, path: str, reason: str = ""):
        self.path = path
        super().__init__(
            f"CLIP model not found: {path!r} is neither a directory holding a saved CLIP nor a model id in the "
            "local Hugging Face cache (loading is offline: local_files_only=True)"
            + (f" [{reason}]" if reason else "")
            + ". Provide it: on a machine with internet access run CLIPModel.from_pretrained(ID).save_pretrained(DIR) "
            "and CLIPProcessor.from_pretrained(ID).save_pretrained(DIR) (or download the repository files into DIR), "
            "copy DIR here and pass its path as model_path (the suite's clip_model).")


def _image_processor_class():
    # transformers 5 makes CLIPImageProcessor the torchvision backend (falling back with a warning
    # when torchvision is absent, as here); the PIL backend is the same preprocessing
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL/numpy implementation
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def _features(output) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is the
    projected embedding (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clip(model_path: str | os.PathLike, revision: str | None = None):
    """(model, tokenizer, image processor) from a local directory or the HF cache, offline."""
    from transformers import CLIPModel, CLIPTokenizer

    path = os.path.expanduser(str(model_path))
    local = os.path.isdir(path)
    if not local and (os.path.isabs(path) or path.startswith(".") or path.count("/") > 1):
        raise ClipModelNotFound(path, "no such directory")
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True, revision=revision)
        tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True, revision=revision)
        processor = _image_processor_class().from_pretrained(path, local_files_only=True, revision=revision)
    except (OSError, ValueError) as error:
        if local:
            raise
        raise ClipModelNotFound(path, " ".join(str(error).split())[:300]) from None
    return model, tokenizer, processor


def class_prompts(classes: dict | None, templates: list[str] | None) -> dict[str, dict[str, list[str]]]:
    """{attribute: {class name: [prompts]}} from the labeler's `classes` and `templates` (see the
    module docstring); a ValueError for a template without '{}', an attribute with fewer than two
    classes, or a class text that is not a string."""
    if templates is not None:
        templates = list(templates)
        if not templates or any(not isinstance(t, str) or "{}" not in t for t in templates):
            raise ValueError(f"each template needs a '{{}}' for the class text, got {templates}")
    if not isinstance(classes, dict | None):
        raise ValueError(f"classes must map each attribute to its classes, got {classes!r}")
    prompts: dict[str, dict[str, list[str]]] = {}
    for attribute, spec in (classes or {}).items():
        if not isinstance(spec, dict | list | tuple):
            raise ValueError(f"classes of {attribute!r} must be a list of class texts or a mapping of class "
                             f"names to texts, got {spec!r}")
        items = spec.items() if isinstance(spec, dict) else ((c, c) for c in spec)
        per_class = {}
        for name, texts in items:
            texts = [texts] if isinstance(texts, str) else list(texts) if isinstance(texts, list | tuple) else [texts]
            if not all(isinstance(t, str) for t in texts):
                raise ValueError(f"class {name!r} of {attribute!r}: class texts must be strings, got {texts}")
            per_class[str(name)] = [t.format(x) for x in texts for t in templates] if templates else texts
        if len(per_class) < 2:
            raise ValueError(f"attribute {attribute!r} needs at least two classes, got {list(per_class)}")
        prompts[str(attribute)] = per_class
    return prompts


class ClipZeroShotLabeler(Labeler):
    name = "clip_zeroshot"

    def __init__(self, model_path: str | os.PathLike, classes: dict | None = None, templates: list[str] | None = None,
                 device: str = "cpu", batch_size: int = 64, revision: str | None = None):
        self.prompts = class_prompts(classes, templates)
        self.model_path, self.templates, self.device, self.batch_size = str(model_path), templates, device, batch_size
        model, self.tokenizer, self.processor = load_clip(model_path, revision)
        self.model = model.to(device).eval()
        self.attributes = {a: list(p) for a, p in self.prompts.items()}
        self.class_embeddings = {a: self._class_embeddings(p) for a, p in self.prompts.items()}
        import transformers

        self.source = (f"transformers {transformers.__version__} CLIPModel from {self.model_path} (zero-shot: "
                       "softmax of logit_scale * cosine over class-prompt embeddings)")

    @classmethod
    def vocabulary(cls, options: dict) -> dict[str, list[str]]:
        """The classes as given in `classes`, in their order (no CLIP is loaded)."""
        return {a: list(p) for a, p in class_prompts(options["classes"], options["templates"]).items()}

    def describe(self) -> dict:
        return {**super().describe(), "templates": self.templates, "prompts": self.prompts}

    # -- embeddings ------------------------------------------------------------------------------

    @property
    def max_tokens(self) -> int:
        """Tokens the text encoder reads (77 for CLIP): the tokenizer's limit, never more than the
        model's position embeddings (a scratch tokenizer may claim a huge default)."""
        return min(int(self.tokenizer.model_max_length), int(self.model.config.text_config.max_position_embeddings))

    def truncated(self, texts: list[str]) -> int:
        """How many of the texts are longer than max_tokens. encode_texts keeps their first tokens
        and the end-of-text token, which CLIP pools (as OpenAI's clip.tokenize(truncate=True));
        torchmetrics' CLIPScore slices the ids instead, dropping it."""
        lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=False)["input_ids"]]
        return sum(length > self.max_tokens for length in lengths)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalized text embeddings [T, D] (texts longer than max_tokens are truncated)."""
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                    max_length=self.max_tokens, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            chunks.append(_features(self.model.get_text_features(**tokens)).float())
        if not chunks:
            return torch.zeros(0, self.model.config.projection_dim, device=self.device)
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalized image embeddings [N, D] of images [N, 3, H, W] in [0, 1]. Images go
        through the model's own image processor as 8-bit RGB, as a saved PNG would."""
        chunks = []
        for i in range(0, len(images), self.batch_size):
            arrays = list(to_uint8_rgb(images[i:i + self.batch_size]))
            pixels = self.processor(images=arrays, return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, dtype=self.model.dtype)
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels)).float())
        if not chunks:
            return torch.zeros(0, self.model.config.projection_dim, device=self.device)
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def _class_embeddings(self, per_class: dict[str, list[str]]) -> torch.Tensor:
        rows = [self.encode_texts(prompts).mean(0) for prompts in per_class.values()]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    # -- outputs ---------------------------------------------------------------------------------

    @torch.no_grad()
    def label(self, images: torch.Tensor) -> LabelResult:
        n = len(images)
        probs: dict[str, np.ndarray] = {}
        if self.attributes:
            features = self.encode_images(images)
            scale = self.model.logit_scale.exp().float()
            for attribute, classes in self.class_embeddings.items():
                probs[attribute] = (scale * features @ classes.T).softmax(-1).cpu().numpy().astype(np.float32)
        return LabelResult(probs=probs, valid=np.ones(n, dtype=bool), reasons=[None] * n)

    def image_text_scores(self, images: torch.Tensor, texts: list[str]) -> np.ndarray:
        """Cosine similarities [N, T] between each image and each text (CLIP score: pair image i
        with text i, 100 * max(cos, 0))."""
        return (self.encode_images(images) @ self.encode_texts(list(texts)).T).cpu().numpy()
