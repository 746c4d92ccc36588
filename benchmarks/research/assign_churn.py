"""How often distribution guidance's per-step batch split (`push: assign`) changes a sample's class.

Guides one batch of the zoo DDPM toward a uniform target and records the class the split gives
each sample at every guided step; prints, per step, how many samples changed class, and how many
changed at least once. `push: assign_once` keeps the first split, so it reads 0 by construction.

    python benchmarks/research/assign_churn.py --attributes skin_tone eyeglasses --scale 4 [--json F]

Measured (seeds 0-63, scale 4, stop 0.8, eta 1): skin tone x eyeglasses 40 of 64 samples
changed class at least once, some in the last guided steps; hair colour 37; skin tone 2, in the
first two steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from audit.methods.distribution_guidance import PUSHES, DistributionGuidance
from audit.models.adapter import ModelAdapter
from audit.probes.probe import Probe
from audit.zoo import WEIGHTS_DIR, zoo_path


class SplitRecorder(DistributionGuidance):
    """Distribution guidance that keeps the batch split of every guided step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.splits: list[list[int]] = []

    def assigned_loss(self, h, batch):
        loss = super().assigned_loss(h, batch)
        self.splits.append(list(batch.state["assigned"]))
        return loss


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthfaces-ddpm")
    parser.add_argument("--attributes", nargs="+", default=["skin_tone", "eyeglasses"])
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--push", default="assign", choices=[p for p in PUSHES if p.startswith("assign")])
    parser.add_argument("--seeds", type=int, default=64, help="seeds 0..N-1, one batch")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    adapter = ModelAdapter.from_directory(zoo_path(args.model), model_id=f"zoo:{args.model}")
    probes = [Probe.load(WEIGHTS_DIR / "probes" / args.model / "synthfaces-pseudo" / a) for a in args.attributes]
    k = int(np.prod([len(p.classes) for p in probes]))
    method = SplitRecorder(probes, [1 / k] * k, scale=args.scale, push=args.push)
    seeds = list(range(args.seeds))
    method.start_cell(seeds)
    adapter.generate(seeds, steps=args.steps, method=method)
    splits = np.asarray(method.splits)
    changed_per_step = (splits[1:] != splits[:-1]).sum(1).tolist()
    result = {"model": args.model, "attributes": args.attributes, "scale": args.scale, "push": args.push,
              "seeds": args.seeds, "guided_steps": len(splits), "changed_per_step": changed_per_step,
              "samples_ever_changed": int((splits != splits[0]).any(0).sum())}
    print(f"{result['samples_ever_changed']} of {args.seeds} samples changed class at least once; "
          f"per step: {changed_per_step}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
