"""Monk skin tone from `skin-tone-classifier` 1.2.6 (`stone`): an OpenCV haar cascade finds the
(biggest) face, skin pixels are segmented (HSV thresholds for colour images, Otsu for
black-and-white ones), two dominant colours are found by k-means, and the tone is the Monk Skin
Tone Scale swatch (10 tones, Monk 2019; monk_01 lightest .. monk_10 darkest) with the smallest
CIEDE2000 distance.

stone gives a hard label only, so `monk` is one-hot, and `skin_tone_group` sums it into the
configured groups (one-hot too). When stone finds no face it classifies the skin of the whole
image (face_id "NA"): such images are invalid here ("no face detected").

Differences from `stone.process` defaults, each a constructor argument:
- images arrive as tensors, so stone's `process_image` is called on the decoded BGR array;
- stone's "auto" black-and-white test (`is_black_white`) sums pixel *indices* and so calls
  almost every photo black-and-white; here an image is black-and-white only when its three
  channels are equal (`image_type="auto"`), or as forced with "color" / "bw";
- images are resized to `width` 256 px (stone: 250) and faces down to 30 px are kept (stone:
  90 px, which misses e.g. the astronaut photo's face at that width);
- OpenCV's k-means RNG is seeded before each image, so labels are reproducible.
Importing stone normally asks PyPI for a newer version; STONE_UPGRADE_FLAG=1 is set to skip it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from audit.labelers.base import Labeler, LabelResult, one_hot, to_uint8_rgb

MONK = [f"monk_{i:02d}" for i in range(1, 11)]
DEFAULT_GROUPS = {"light": [1, 2, 3, 4], "medium": [5, 6, 7], "dark": [8, 9, 10]}


def _check_groups(groups: dict[str, list[int]]) -> dict[str, list[int]]:
    groups = {str(k): [int(t) for t in v] for k, v in groups.items()}
    tones = sorted(t for v in groups.values() for t in v)
    if tones != list(range(1, 11)):
        raise ValueError(f"skin tone groups must cover Monk tones 1..10 exactly once each, got {groups}")
    return groups


class SkinToneLabeler(Labeler):
    name = "skin_tone"

    def __init__(self, groups: dict[str, list[int]] | None = None, image_type: str = "auto", width: int = 256,
                 min_face: int = 30, min_neighbors: int = 5, scale: float = 1.1, skin_threshold: float = 0.15,
                 n_colors: int = 2, seed: int = 0, device: str = "cpu"):
        """groups: name -> Monk tones (1..10), each tone in exactly one group.
        device: accepted for a uniform interface; stone runs on CPU."""
        if image_type not in ("auto", "color", "bw"):
            raise ValueError(f"image_type must be 'auto', 'color' or 'bw', got {image_type!r}")
        os.environ.setdefault("STONE_UPGRADE_FLAG", "1")  # no PyPI version check on import
        try:
            from stone import image as stone_image
            from stone.package import __version__
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("the skin_tone labeler needs the skin-tone-classifier package (and "
                              "opencv-python-headless<5): pip install 'diffaudit[labelers]'") from error
        self._stone = stone_image
        self.palette = [c.upper() for c in stone_image.DEFAULT_TONE_PALETTE["monk"]]
        if len(self.palette) != len(MONK):
            raise RuntimeError(f"stone's Monk palette has {len(self.palette)} tones, expected 10")
        self.tone_labels = list(MONK)
        self.groups = _check_groups(groups or DEFAULT_GROUPS)
        self.group_matrix = np.zeros((len(MONK), len(self.groups)), dtype=np.float32)
        for k, tones in enumerate(self.groups.values()):
            self.group_matrix[[t - 1 for t in tones], k] = 1.0
        self.attributes = {"monk": list(MONK), "skin_tone_group": list(self.groups)}
        self.image_type, self.width, self.min_face = image_type, width, min_face
        self.min_neighbors, self.scale, self.skin_threshold = min_neighbors, scale, skin_threshold
        self.n_colors, self.seed, self.device = n_colors, seed, "cpu"
        self.source = (f"skin-tone-classifier {__version__} (stone: OpenCV haar face detection, skin "
                       "segmentation, dominant colours, nearest Monk Skin Tone swatch by CIEDE2000)")

    @classmethod
    def vocabulary(cls, options: dict) -> dict[str, list[str]]:
        if options["image_type"] not in ("auto", "color", "bw"):
            raise ValueError(f"image_type must be 'auto', 'color' or 'bw', got {options['image_type']!r}")
        return {"monk": list(MONK), "skin_tone_group": list(_check_groups(options["groups"] or DEFAULT_GROUPS))}

    def _is_bw(self, image: np.ndarray) -> bool:
        if self.image_type != "auto":
            return self.image_type == "bw"
        signed = image.astype(np.int16)
        return bool(np.abs(signed - signed[..., :1]).max() <= 2)  # the three channels agree

    def classify(self, rgb: np.ndarray) -> tuple[int | None, str | None]:
        """(Monk tone index 0..9, None) for one HxWx3 uint8 RGB image, or (None, reason)."""
        import cv2

        bgr = np.ascontiguousarray(rgb[..., ::-1])
        cv2.setRNGSeed(self.seed)
        try:
            records, _ = self._stone.process_image(
                bgr, self._is_bw(bgr), False, self.palette, self.tone_labels, new_width=self.width,
                n_dominant_colors=self.n_colors, scaleFactor=self.scale, minNeighbors=self.min_neighbors,
                minSize=(self.min_face, self.min_face), threshold=self.skin_threshold)
        except cv2.error as error:
            if "clusters than elements" in str(error):  # k-means on (almost) no skin-coloured pixels
                return None, "no face detected (stone: no skin pixels to classify)"
            return None, f"stone failed: {' '.join(str(error).split())[:200]}"
        faces = [r for r in records if r.get("face_id") != "NA"]
        if not faces:
            return None, "no face detected (stone: haar cascade found no face with enough skin)"
        return self.tone_labels.index(faces[0]["tone_label"]), None

    def label(self, images: torch.Tensor) -> LabelResult:
        n = len(images)
        monk = np.zeros((n, len(MONK)), dtype=np.float32)
        valid = np.zeros(n, dtype=bool)
        reasons: list[str | None] = [None] * n
        for start in range(0, n, 64):
            for j, image in enumerate(to_uint8_rgb(images[start:start + 64])):
                tone, reasons[start + j] = self.classify(image)
                if tone is not None:
                    monk[start + j], valid[start + j] = one_hot(tone, len(MONK)), True
        return LabelResult(probs={"monk": monk, "skin_tone_group": monk @ self.group_matrix}, valid=valid,
                           reasons=reasons)
