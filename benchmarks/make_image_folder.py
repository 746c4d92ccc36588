"""Write benchmarks/images/lfw/, the image folder that benchmarks/images_lfw.yaml audits: 16 face
photos from scikit-image's LFW subset (25 px crops, upscaled to 64 px, PNG) with a metadata.jsonl
in the imagefolder convention, as an API model's outputs would be saved (docs/image-folders.md).
The first prompt's lines carry no seed (the images are numbered by their row), the second's carry
the seeds a generator would report.

    python benchmarks/make_image_folder.py [--out benchmarks/images/lfw]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

PROMPTS = [("a photo of a person", range(0, 10), None), ("a portrait photo of a person", range(10, 16), 100)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images" / "lfw")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    faces = np.asarray(data.lfw_subset())[:100]  # the first 100 are faces, the rest background crops
    faces = (faces * 255).round().astype(np.uint8) if faces.max() <= 1 else faces.astype(np.uint8)
    with open(out / "metadata.jsonl", "w") as metadata:
        for prompt, indices, first_seed in PROMPTS:
            for k, i in enumerate(indices):
                name = f"face-{i:03d}.png"
                Image.fromarray(faces[i]).resize((64, 64), Image.BICUBIC).save(out / name, optimize=True)
                row = {"file_name": name, "prompt": prompt, "model": "lfw_subset (scikit-image)", "lfw_index": i}
                if first_seed is not None:
                    row["seed"] = first_seed + k
                metadata.write(json.dumps(row) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
