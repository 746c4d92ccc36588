"""Wall time of distribution-guided vs unguided sampling on the same seeds and batch.

The target (issue 3) is a ratio <= 1.10: h-path guidance differentiates only the linear probe,
never the UNet. Runs are interleaved (unguided, guided, unguided, ...) so that drift in machine
load hits both alike; the ratio of medians is reported.

    python benchmarks/guidance_cost.py [--model synthfaces-ddpm] [--batch 64] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from audit.methods.distribution_guidance import DistributionGuidance
from audit.models.adapter import ModelAdapter
from audit.probes.probe import Probe
from audit.zoo import WEIGHTS_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthfaces-ddpm")
    parser.add_argument("--attribute", default="skin_tone")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--path", default="h", choices=["h", "x"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/guidance_cost.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    adapter = ModelAdapter.from_zoo(args.model)
    probe = Probe.load(WEIGHTS_DIR / "probes" / args.model / "synthfaces-pseudo" / args.attribute)
    target = [1 / len(probe.classes)] * len(probe.classes)
    seeds = list(range(args.batch))
    prompts = ["a photo of a person"] * len(seeds) if adapter.conditional else None
    cfg = 2.0 if adapter.conditional else 1.0

    def timed(method) -> float:
        start = time.perf_counter()
        adapter.generate(seeds, prompts=prompts, steps=args.steps, guidance_scale=cfg, method=method)
        return time.perf_counter() - start

    timed(None)  # warm-up: first call pays for allocations and the hook
    unguided, guided = [], []
    for _ in range(args.repeats):
        unguided.append(timed(None))
        guided.append(timed(DistributionGuidance([probe], target, scale=1.0, path=args.path)))
    ratio = statistics.median(guided) / statistics.median(unguided)
    result = {"model": args.model, "attribute": args.attribute, "batch": args.batch, "steps": args.steps,
              "path": args.path, "threads": torch.get_num_threads(), "unguided_s": unguided,
              "guided_s": guided, "ratio_of_medians": round(ratio, 4), "target": 1.10,
              "passes": ratio <= 1.10}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
