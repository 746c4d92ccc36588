"""Guidance at far too large a scale must degrade gracefully: no NaN, no blank images.

The original Balancing Act code produced all-black images when its scale exploded; here the
per-sample guard clips steps and skips non-finite gradients. This runs distribution guidance at
`--factor` times a given (calibrated) scale and counts non-finite and blank images (per-image
pixel standard deviation below 0.02 on [0, 1]).

    python benchmarks/research/guidance_stress.py --scale 4 --factor 10
    python benchmarks/research/guidance_stress.py --scale 5.657 --push assign --eta 1 --out F   # the zoo's sampler
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from audit.labelers.synthfaces import SynthFacesLabeler
from audit.methods.distribution_guidance import DistributionGuidance
from audit.models.adapter import ModelAdapter
from audit.probes.probe import Probe
from audit.zoo import WEIGHTS_DIR, zoo_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthfaces-ddpm")
    parser.add_argument("--attribute", default="skin_tone")
    parser.add_argument("--scale", type=float, required=True, help="the calibrated scale")
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (the zoo DDPM samples with 1)")
    parser.add_argument("--push", default="all", help="distribution guidance's push: all, surplus or assign")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/guidance_stress.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    adapter = ModelAdapter.from_directory(zoo_path(args.model), model_id=f"zoo:{args.model}")
    probe = Probe.load(WEIGHTS_DIR / "probes" / args.model / "synthfaces-pseudo" / args.attribute)
    target = [1 / len(probe.classes)] * len(probe.classes)
    scale = args.scale * args.factor
    images, stats = [], []
    for start in range(0, args.n, args.batch):
        seeds = list(range(start, min(args.n, start + args.batch)))
        method = DistributionGuidance([probe], target, scale=scale, push=args.push)
        method.start_cell(seeds)
        out = adapter.generate(seeds, steps=args.steps, method=method, eta=args.eta or None)
        images.append(out.images)
        stats.append(out.stats)
    images = torch.cat(images)
    finite = torch.isfinite(images).flatten(1).all(1)
    blank = images.flatten(1).std(1) < 0.02
    labels = SynthFacesLabeler("synthfaces-eval").label(images.nan_to_num())
    share = labels.probs[args.attribute].argmax(1)
    result = {"model": args.model, "attribute": args.attribute, "scale": scale, "calibrated_scale": args.scale,
              "n": args.n, "steps": args.steps, "eta": args.eta, "push": args.push,
              "non_finite_images": int((~finite).sum()),
              "blank_images": int(blank.sum()), "clipped_steps": sum(s.get("clipped_steps", 0) for s in stats),
              "skipped_nonfinite": sum(s.get("skipped_nonfinite", 0) for s in stats),
              "class_shares": [float((share == k).mean()) for k in range(len(probe.classes))],
              "passes": bool(finite.all() and not blank.any())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
