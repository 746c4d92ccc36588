"""`source: zoo:NAME`: the zoo's diffusion models as a model source, with everything the zoo
knows about them: the sampler they were trained for, the labelers, FID and CLIP made for their
world, and the probes and calibrations it ships."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from audit.plugins import ModelNotAvailable, ModelSource
from audit.zoo import WEIGHTS_DIR, is_trained, zoo_path
from audit.zoo.recipes import RECIPES, DiffusionRecipe

CLIP = "synthfaces-clip"
# Measured on 2 CPU cores: seconds per image per step (batch 50); see docs/zoo.md.
SECONDS_PER_IMAGE_STEP = {"synthfaces-ddpm": 0.0035, "synthfaces-t2i": 0.006}


def diffusion_models() -> list[str]:
    return [name for name, recipe in RECIPES.items() if isinstance(recipe, DiffusionRecipe)]


def zoo_revision(path: Path) -> str:
    """A zoo model's revision: its training step and a hash of its UNet weights, so probes and
    caches made for other weights of the same name are recognised as stale."""
    steps = json.loads((path / "training.json").read_text()).get("steps", "?")
    digest = hashlib.sha256()
    for weights in sorted((path / "unet").glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return f"step{steps}-{digest.hexdigest()[:10]}"


class ZooSource(ModelSource):
    description = "the bundled SynthFaces zoo (32 px faces with exact ground truth)"

    def names(self) -> list[str]:
        return diffusion_models()

    def check(self, name: str) -> None:
        if name not in diffusion_models():
            raise ValueError(f"unknown zoo model {name!r}; allowed: {', '.join(diffusion_models())}")

    def resolve(self, name: str, revision: str | None) -> tuple[Path, str]:
        self.check(name)
        if not is_trained(name):
            raise ModelNotAvailable(f"zoo model {name} has no weights in this install: "
                                    f"run `diffaudit zoo train {name}`")
        return zoo_path(name), f"zoo:{name}"

    def revision(self, name: str, path: Path) -> str:
        return zoo_revision(path)

    def is_text_model(self, name: str) -> bool:
        return bool(RECIPES[name].conditional)

    def model_defaults(self, name: str) -> dict:
        eta = RECIPES[name].sampling_eta
        return {} if eta is None else {"eta": eta}

    def suite_defaults(self, name: str) -> dict:
        return {"labelers": ["synthfaces-eval"], "probe_labeler": "synthfaces-pseudo",
                "fid": {"extractor": "synthfaces", "reference": "synthfaces:biased"}}

    def shipped_probes(self, name: str, labeler: str) -> Path:
        return WEIGHTS_DIR / "probes" / name / labeler

    def shipped_calibrations(self, name: str) -> Path:
        return WEIGHTS_DIR / "calibration" / name

    def clip_model(self, name: str) -> tuple[str, str] | None:
        """The zoo's own CLIP, trained on the same world: a CLIP that never saw SynthFaces could
        not judge its prompts."""
        path = zoo_path(CLIP)
        return (str(path), f"zoo:{CLIP}") if (path / "config.json").exists() else None

    def seconds_per_image_step(self, name: str) -> float | None:
        return SECONDS_PER_IMAGE_STEP.get(name)
