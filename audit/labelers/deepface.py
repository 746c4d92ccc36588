"""Gender, race, age groups and emotion from deepface's `DeepFace.analyze` (pytorch backend).

deepface ships no weights: its gender, race and age models (VGG-Face based) and its emotion model
are files the user supplies in `$DEEPFACE_HOME/.deepface/weights` (DEEPFACE_HOME defaults to the
home directory). deepface would download a missing file at run time; this labeler never lets it:
the files are checked when the labeler is built (one `DeepFaceWeightsMissing` error, a
FileNotFoundError, names every missing file, its expected path and how to provide it), and while
deepface runs, its download function is replaced by one that raises that error instead.

Engine: `DEEPFACE_BACKEND_ENGINE` selects deepface's backend (tensorflow, pytorch or onnx) and is
set to "pytorch" when unset; deepface fixes its engine once per process.

Probabilities: gender [woman, man], race and emotion are deepface's own softmax outputs (analyze
reports them in percent; renormalized to sum to 1). analyze reports only the expected apparent
age (an integer), so `age` is one-hot on that age's group. The face detector is opencv's haar
cascade by default (offline with opencv<5, which ships the cascade files). When several faces
are found, the largest is labeled; no face -> invalid, with the reason.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

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

MODELS = {"gender": "Gender", "race": "Race", "age": "Age", "emotion": "Emotion"}
# analyze()'s keys for each attribute's classes, in our class order
GENDER_KEYS = ["Woman", "Man"]
RACES = ["asian", "indian", "black", "white", "middle eastern", "latino hispanic"]
EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
# the pytorch backend's file names, used when a deepface module does not expose WEIGHTS_URL
FALLBACK_FILES = {"Gender": "gender_model_weights.pth", "Race": "race_model_single_batch.pth",
                  "Age": "age_model_weights.pth", "Emotion": "facial_expression_model_weights.pth"}
# detectors that fetch weights through their own packages, past deepface's download function
UNGUARDED_DETECTORS = {"retinaface"}


def weights_dir() -> str:
    """Where deepface looks for weights: $DEEPFACE_HOME/.deepface/weights (DEEPFACE_HOME
    defaults to the home directory)."""
    home = os.getenv("DEEPFACE_HOME", default=os.path.expanduser("~"))
    return os.path.normpath(os.path.join(home, ".deepface", "weights"))


class DeepFaceWeightsMissing(FileNotFoundError):
    """deepface weight files are absent and downloading them at run time is not allowed."""

    def __init__(self, missing: list[tuple[str, str | None]]):
        self.missing = [name for name, _ in missing]
        self.paths = [os.path.join(weights_dir(), name) for name in self.missing]
        files = "; ".join(f"{name} (expected at {path}" + (f", deepface's source: {url})" if url else ")")
                          for (name, url), path in zip(missing, self.paths, strict=True))
        super().__init__(
            f"deepface weights missing: {files}. diffaudit never lets deepface download at run time: "
            f"fetch the file(s) on a machine with internet access, copy them into {weights_dir()} "
            "(or set DEEPFACE_HOME to the folder that holds .deepface/weights) and build the labeler again.")


def _import_deepface(engine: str | None):
    """Import deepface on the requested backend engine; one-line errors when it cannot."""
    engine = (engine or os.environ.get("DEEPFACE_BACKEND_ENGINE") or "pytorch").strip().lower()
    os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", engine)
    try:
        from deepface.commons import backend_utils, weight_utils
        from deepface.modules import modeling
    except ImportError:
        raise ImportError("the deepface labeler needs the deepface package: pip install 'diffaudit[deepface]' "
                          "(and torch for its pytorch backend)") from None
    running = backend_utils.get_backend_engine()
    if running != engine:
        raise RuntimeError(f"deepface already runs on the {running} backend in this process (it fixes its engine "
                           f"once, from DEEPFACE_BACKEND_ENGINE); the deepface labeler was asked for {engine}")
    return engine, modeling, weight_utils


@contextmanager
def no_downloads(weight_utils):
    """Replace deepface's `download_weights_if_necessary` by one that raises
    DeepFaceWeightsMissing for an absent file (a present one is returned as deepface would)."""
    original = weight_utils.download_weights_if_necessary

    def offline(file_name, source_url=None, compress_type=None):
        if os.path.isfile(os.path.join(weights_dir(), file_name)):
            return original(file_name=file_name, source_url=source_url, compress_type=compress_type)
        url = source_url if isinstance(source_url, str) or source_url is None else (list(source_url) or [None])[0]
        raise DeepFaceWeightsMissing([(file_name, url)])

    weight_utils.download_weights_if_necessary = offline
    try:
        yield
    finally:
        weight_utils.download_weights_if_necessary = original


class DeepFaceLabeler(Labeler):
    name = "deepface"

    def __init__(self, actions: tuple[str, ...] | list[str] = ("gender", "race", "age", "emotion"),
                 detector_backend: str = "opencv", age_bins: tuple[int, ...] | list[int] = (20, 40, 60),
                 align: bool = True, min_side: int | None = None, device: str | None = None,
                 engine: str | None = None):
        """actions: attributes to label (gender, race, age, emotion). detector_backend: deepface's
        face detector ("opencv" haar cascades by default). min_side: upscale smaller images first.
        device: torch device of the pytorch models (default: deepface's choice, cuda:0 when
        available). engine: deepface backend (default $DEEPFACE_BACKEND_ENGINE or "pytorch")."""
        self.attributes = self.vocabulary({"actions": actions, "detector_backend": detector_backend,
                                           "age_bins": age_bins})
        self.engine, self._modeling, self._weight_utils = _import_deepface(engine)
        self.actions = list(actions)
        self.detector_backend, self.align, self.min_side = detector_backend, align, min_side
        self.age_bins = tuple(int(b) for b in age_bins)
        self.check_weights()
        with no_downloads(self._weight_utils):  # build everything now: errors surface here, not mid-run
            if detector_backend != "skip":
                self._modeling.build_model(task="face_detector", model_name=detector_backend)
            self.models = {a: self._modeling.build_model(task="facial_attribute", model_name=MODELS[a])
                           for a in self.actions}
        if device is not None:
            for model in self.models.values():
                if isinstance(getattr(model, "model", None), torch.nn.Module):
                    model.device = torch.device(device)
                    model.model.to(model.device)
        self.device = device
        from deepface import __version__

        self.source = (f"deepface {__version__} ({self.engine} backend; {detector_backend} face detector; "
                       f"{', '.join(MODELS[a] for a in self.actions)} models from {weights_dir()})")

    @classmethod
    def vocabulary(cls, options: dict) -> dict[str, list[str]]:
        """The classes of each action; rejects unknown actions and detectors that would download."""
        actions = list(options["actions"])
        unknown = [a for a in actions if a not in MODELS]
        if unknown or not actions:
            raise ValueError(f"deepface actions must be among {list(MODELS)}, got {actions}")
        if options["detector_backend"] in UNGUARDED_DETECTORS:
            raise ValueError(f"detector {options['detector_backend']!r} downloads weights through its own package; "
                             "use opencv, ssd, yunet, centerface, dlib or a yolo detector with local weights")
        classes = {"gender": ["woman", "man"], "race": list(RACES), "age": age_group_names(options["age_bins"]),
                   "emotion": list(EMOTIONS)}
        return {a: classes[a] for a in actions}

    def weight_files(self) -> list[tuple[str, str | None]]:
        """(file name, deepface's source url) of each attribute model's weights."""
        files = []
        for action in self.actions:
            cls = self._modeling.get_model_class(task="facial_attribute", model_name=MODELS[action])
            urls = getattr(sys.modules[cls.__module__], "WEIGHTS_URL", None)
            url = urls if isinstance(urls, str) or urls is None else (list(urls) or [None])[0]
            files.append((url.rsplit("/", 1)[-1] if url else FALLBACK_FILES[MODELS[action]], url))
        return files

    def check_weights(self) -> None:
        missing = [(name, url) for name, url in self.weight_files()
                   if not os.path.isfile(os.path.join(weights_dir(), name))]
        if missing:
            raise DeepFaceWeightsMissing(missing)

    def _analyze(self, bgr: np.ndarray) -> tuple[dict | None, str | None]:
        from deepface import DeepFace
        from deepface.modules.exceptions import FaceNotDetected

        try:
            with no_downloads(self._weight_utils):
                faces = DeepFace.analyze(img_path=bgr, actions=self.actions, enforce_detection=True,
                                         detector_backend=self.detector_backend, align=self.align, silent=True)
        except FaceNotDetected:
            return None, f"no face detected (deepface {self.detector_backend} detector)"
        except ValueError as error:  # deepface's other per-image failures (e.g. an empty face crop)
            return None, f"deepface failed: {' '.join(str(error).split())[:200]}"
        if not faces:
            return None, f"no face detected (deepface {self.detector_backend} detector)"
        return max(faces, key=lambda f: f["region"]["w"] * f["region"]["h"]), None

    def _probs(self, face: dict) -> dict[str, np.ndarray]:
        out = {}
        for action in self.actions:
            if action == "age":
                group = int(age_group_index([face["age"]], self.age_bins)[0])
                out[action] = one_hot(group, len(self.attributes["age"]))
                continue
            keys = {"gender": GENDER_KEYS, "race": RACES, "emotion": EMOTIONS}[action]
            row = np.array([float(face[action][k]) for k in keys], dtype=np.float64)
            out[action] = (row / row.sum()).astype(np.float32)
        return out

    def label(self, images: torch.Tensor) -> LabelResult:
        n = len(images)
        probs = {a: np.zeros((n, len(c)), dtype=np.float32) for a, c in self.attributes.items()}
        valid = np.zeros(n, dtype=bool)
        reasons: list[str | None] = [None] * n
        for start in range(0, n, 64):  # analyze() works one image at a time; decode in chunks
            for j, image in enumerate(to_uint8_rgb(images[start:start + 64])):
                bgr = np.ascontiguousarray(upscale_min_side(image, self.min_side)[..., ::-1])
                face, reasons[start + j] = self._analyze(bgr)
                if face is None:
                    continue
                for action, row in self._probs(face).items():
                    probs[action][start + j] = row
                valid[start + j] = True
        return LabelResult(probs=probs, valid=valid, reasons=reasons)
