"""Checks every transformer family's tests make (tests/models/test_families_*.py)."""

from __future__ import annotations

import numpy as np
import torch

from audit.methods.distribution_guidance import DistributionGuidance
from audit.models.adapter import ModelAdapter
from audit.probes.probe import Probe

PROMPTS = ["a photo of a person", "a photo of a man"]


def pipeline_images(adapter: ModelAdapter, seeds, **kwargs) -> torch.Tensor:
    """The family's own diffusers pipeline's images from the adapter's per-seed noise, same sampler."""
    import diffusers

    pipe = getattr(diffusers, adapter.family.pipeline_class).from_pretrained(adapter.model_id)
    pipe.scheduler = type(adapter.scheduler).from_config(adapter.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(latents=adapter.initial_noise(seeds), output_type="pt", **kwargs).images


def assert_batch_invariant(adapter: ModelAdapter, guidance_scale: float) -> None:
    """Image i is bit-identical alone and in a batch of four."""
    seeds = [5, 6, 7, 8]
    prompts = [PROMPTS[i % 2] for i in range(4)]
    four = adapter.generate(seeds, prompts=prompts, steps=2, guidance_scale=guidance_scale).images
    one = adapter.generate(seeds[2:3], prompts=prompts[2:3], steps=2, guidance_scale=guidance_scale).images
    assert torch.equal(one[0], four[2])
    assert not torch.equal(four[0], four[2])


def fixed_probe(adapter: ModelAdapter, steps: int, guidance_scale: float) -> tuple[Probe, list[torch.Tensor]]:
    """A linear probe on h along a fixed random direction, standardised on an unguided batch and
    centred so that batch reads about half and half; returns it with the unguided h per step."""
    seeds = list(range(6))
    prompts = [PROMPTS[i % 2] for i in seeds]
    recorded = adapter.generate(seeds, prompts=prompts, steps=steps, guidance_scale=guidance_scale, record_h=True).h
    dim = recorded[0].shape[1]
    probe = Probe("tone", ["low", "high"], adapter.timesteps(steps), dim)
    direction = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for s, h in enumerate(recorded):
            probe.mean[s], probe.std[s] = h.mean(0), h.std(0).clamp(min=1e-4)
            z = (h - probe.mean[s]) / probe.std[s]
            scale = 2.0 / (z @ direction).std()
            probe.weight[s, 1] = direction * scale
            probe.bias[s, 1] = -(z @ probe.weight[s, 1]).median()
    return probe.eval().requires_grad_(False), recorded


def reading(probe: Probe, h: torch.Tensor, t) -> float:
    """The probe's batch share of "high" on h."""
    return float(probe.probs(h, t)[:, 1].mean())


def assert_distribution_guidance_moves_the_reading(adapter: ModelAdapter, guidance_scale: float) -> None:
    """Distribution guidance toward 10/90 moves the probe's batch reading toward 90% "high": on the
    h path, of h as the rest of the denoiser received it (pooled from the edited tokens); on the x
    path, of the last step's h computed from the guided x_t before that step's own move."""
    steps = 4
    probe, unguided = fixed_probe(adapter, steps, guidance_scale)
    t_last = adapter.timesteps(steps)[-1]
    before = reading(probe, unguided[-1], t_last)
    seeds = list(range(6))
    prompts = [PROMPTS[i % 2] for i in seeds]
    plain = adapter.generate(seeds, prompts=prompts, steps=steps, guidance_scale=guidance_scale).images
    hook, seen = adapter.hspace(), []
    for path in ("h", "x"):
        method = DistributionGuidance([probe], np.array([0.1, 0.9]), scale=1.0, path=path, stop=1.0, grad_tau=1.0)
        seen.clear()
        probe_h = hook.model.get_submodule(hook.module).register_forward_hook(
            lambda m, i, o: seen.append(_pooled(hook, o)))
        try:
            out = adapter.generate(seeds, prompts=prompts, steps=steps, guidance_scale=guidance_scale, method=method)
        finally:
            probe_h.remove()
        after = reading(probe, seen[-1][-len(seeds):], t_last) if path == "h" else out.stats["p_hat_probe"][1]
        assert after > before + 0.1, (path, before, after)
        assert torch.isfinite(out.images).all() and "skipped_nonfinite" not in out.stats
        assert (out.images - plain).abs().max() > 1e-4


def _pooled(hook, output) -> torch.Tensor:
    """h as the block handed it on (after the h hook's edit), pooled as the hook pools it."""
    from audit.models.hspace import pool_tokens

    h = output[hook.stream] if isinstance(output, tuple) else output
    return pool_tokens(h.detach().float(), hook.grid, hook.pool).flatten(1)
