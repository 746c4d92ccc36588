"""Where the probe's reading and the images part ways under distribution guidance.

Guides one batch and records, at every step, each sample's probe reading of h after the edit
(what guidance steers) and, once guidance has stopped, of the fresh h; then labels the final
images. Per step it prints the batch's probe mean, and that mean among the samples whose final
image is of each class: a probe that guidance fools reads the wrong class on the samples that
end in the other one.

    python benchmarks/research/guidance_trace.py --attribute skin_tone --target 0.1 0.9 --scale 7.774

Measured on synthfaces-ddpm at 8,000 training steps (deterministic DDIM, seeds 0-63, 0.1/0.9,
scale 7.774, stop 0.8, before the calibration corrected its aim;
benchmarks/results/guidance_trace_skin_0.1_0.9.json): the edited h read 0.00-0.06 light while guiding,
the fresh h 0.35 light at the stop, the images ended 0.20 light,
and the probe's mean reading of the final-light samples at the stop was only 0.71 light.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from audit.labelers.synthfaces import SynthFacesLabeler
from audit.methods.distribution_guidance import DistributionGuidance
from audit.models.adapter import ModelAdapter
from audit.probes.probe import Probe
from audit.zoo import WEIGHTS_DIR, zoo_path


class TracedGuidance(DistributionGuidance):
    """Distribution guidance that keeps the probe's per-sample class probabilities at every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trace: list[tuple[float, bool, np.ndarray]] = []

    def on_h(self, h: torch.Tensor, batch) -> torch.Tensor | None:
        edited = super().on_h(h, batch)
        seen = h if edited is None else edited
        probs = self.probes[0].probs(seen.detach().float(), batch.t).double().numpy()
        self.trace.append((float(batch.progress), edited is not None, probs))
        return edited


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthfaces-ddpm")
    parser.add_argument("--attribute", default="skin_tone")
    parser.add_argument("--target", type=float, nargs="+", required=True, help="class proportions")
    parser.add_argument("--scale", type=float, required=True)
    parser.add_argument("--stop", type=float, default=0.8)
    parser.add_argument("--no-correction", action="store_true", help="aim at the target itself")
    parser.add_argument("--grad-tau", type=float, default=8.0, help="softening of the gradient (1 = none)")
    parser.add_argument("--seeds", type=int, default=64, help="seeds 0..N-1, one batch")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    adapter = ModelAdapter.from_directory(zoo_path(args.model), model_id=f"zoo:{args.model}")
    probe = Probe.load(WEIGHTS_DIR / "probes" / args.model / "synthfaces-pseudo" / args.attribute)
    method = TracedGuidance([probe], args.target, scale=args.scale, stop=args.stop,
                            correct_confusion=not args.no_correction, grad_tau=args.grad_tau)
    out = adapter.generate(list(range(args.seeds)), steps=args.steps, method=method)
    final = SynthFacesLabeler("synthfaces-eval").label(out.images).hard(args.attribute)
    k = len(probe.classes)
    rows = []
    for progress, guided, probs in method.trace:
        rows.append({"progress": round(progress, 3), "guided": guided,
                     "probe_mean": probs.mean(0).round(3).tolist(),
                     "probe_hard_agrees_with_final": round(float((probs.argmax(1) == final).mean()), 3),
                     "probe_mean_by_final_class": {probe.classes[c]: probs[final == c].mean(0).round(3).tolist()
                                                   for c in range(k) if (final == c).any()}})
        print(f"{progress:5.2f} {'guided' if guided else 'free  '} probe mean {rows[-1]['probe_mean']} "
              f"agrees with final {rows[-1]['probe_hard_agrees_with_final']:.2f} "
              f"by final class {rows[-1]['probe_mean_by_final_class']}")
    result = {"model": args.model, "attribute": args.attribute, "target": args.target, "scale": args.scale,
              "stop": args.stop, "correct_confusion": not args.no_correction, "grad_tau": args.grad_tau,
              "seeds": args.seeds,
              "final_shares": (np.bincount(final, minlength=k) / len(final)).round(4).tolist(), "steps": rows}
    print("final shares", result["final_shares"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
