"""Gender from NudeNet 3.4.2's detector (a YOLOv8n ONNX graph bundled in the wheel, 320 px input,
18 classes including FACE_FEMALE and FACE_MALE).

The image is preprocessed exactly as `NudeDetector.detect` does (nudenet's own `_read_image`:
BGR input, padded to a square, resized to 320, scaled to [0, 1]) and the graph runs on a batch.
Among the anchor rows whose best class is FACE_FEMALE or FACE_MALE with a score of at least
`min_score` (0.25: the score threshold `NudeDetector.detect` applies in its NMS), the
highest-scoring row is the face. Its two face-class scores, normalized to sum to 1, are the
gender probabilities [female, male]: the argmax is the class `detect()` reports for that box and
the spread is the detector's own relative evidence. No face row -> invalid.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from audit.labelers.base import Labeler, LabelResult, to_uint8_rgb

GENDERS = ["female", "male"]
FACE_CLASSES = ("FACE_FEMALE", "FACE_MALE")


def _providers(device: str) -> list:
    import onnxruntime

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError(f"device {device!r} asked for, but this onnxruntime has no CUDA provider "
                               "(install onnxruntime-gpu or use device='cpu')")
        index = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ValueError(f"unsupported device {device!r} for the nudenet labeler (use 'cpu' or 'cuda[:N]')")


class NudeNetLabeler(Labeler):
    name = "nudenet"
    attributes = {"gender": list(GENDERS)}

    def __init__(self, device: str = "cpu", batch_size: int = 16, min_score: float = 0.25,
                 threads: int | None = None, model_path: str | None = None):
        """threads: onnxruntime intra-op threads (default: torch.get_num_threads()).
        model_path: another NudeNet-format ONNX graph (default: the 320n.onnx bundled with nudenet)."""
        try:
            import nudenet
            import nudenet.nudenet as backend
            import onnxruntime
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("the nudenet labeler needs the nudenet package: "
                              "pip install 'diffaudit[labelers]'") from error
        from importlib.metadata import version

        self._read_image = backend._read_image
        labels = list(getattr(backend, "__labels"))
        self.face_columns = [labels.index(c) for c in FACE_CLASSES]
        self.model_path = model_path or os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"NudeNet model not found at {self.model_path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(self.model_path, options, providers=_providers(device))
        self.input_name = self.session.get_inputs()[0].name
        self.resolution = 320
        self.device, self.batch_size, self.min_score = device, batch_size, min_score
        self.source = (f"nudenet {version('nudenet')} (YOLOv8n detector {os.path.basename(self.model_path)}, "
                       "FACE_FEMALE / FACE_MALE classes)")

    def _face(self, rows: np.ndarray) -> np.ndarray | None:
        """rows: [anchors, 4 + classes]. Normalized [female, male] scores of the best face row."""
        scores = rows[:, 4:]
        best = scores.argmax(1)
        top = scores.max(1)
        is_face = np.isin(best, self.face_columns) & (top >= self.min_score)
        if not is_face.any():
            return None
        row = scores[np.flatnonzero(is_face)[top[is_face].argmax()]]
        pair = row[self.face_columns].astype(np.float64)
        return pair / pair.sum()

    def label(self, images: torch.Tensor) -> LabelResult:
        n = len(images)
        gender = np.zeros((n, 2), dtype=np.float32)
        valid = np.zeros(n, dtype=bool)
        reasons: list[str | None] = [None] * n
        for start in range(0, n, self.batch_size):
            batch = to_uint8_rgb(images[start:start + self.batch_size])
            # nudenet reads images the way cv2.imread returns them: BGR
            blobs = [self._read_image(np.ascontiguousarray(image[..., ::-1]), self.resolution)[0] for image in batch]
            output = self.session.run(None, {self.input_name: np.vstack(blobs)})[0]
            for j in range(len(batch)):
                face = self._face(output[j].T)
                if face is None:
                    reasons[start + j] = f"no face detected (nudenet: no FACE_* score >= {self.min_score})"
                else:
                    gender[start + j], valid[start + j] = face, True
        return LabelResult(probs={"gender": gender}, valid=valid, reasons=reasons)
