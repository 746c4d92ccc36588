"""What diffaudit costs: guidance overhead, sampling-loop overhead, fairness metrics
at scale, and how a cell's time and memory scale with its size.

- guidance overhead: wall time of each method / `none` on zoo:synthfaces-ddpm, same seeds and
  batch, runs interleaved (none, DG, SG, ...) so drifting machine load hits all alike; ratio of
  medians. Bars: distribution and sample guidance (h path) <= 1.10; the x path, universal
  guidance (a UNet backward per step) and unsupervised h-space balancing (self_debias, its
  clusters fitted before timing) are reported.
- text-method overhead: the same on zoo:synthfaces-t2i (classifier-free guidance 2.0) for the
  methods that apply to text models only: prompt-embedding projection and semantic guidance.
- loop overhead: ModelAdapter.generate with no method vs the bare UNet forward passes it makes
  (same batch, same timesteps): what the scheduler, hooks and bookkeeping add. Bar <= 1.05.
- metrics: benchmarks/metrics_speed.py (100,000 samples x 3 attributes, 1,000 resamples).
- scaling: cells of 1k, 4k, 16k samples through the runner (generate -> PNGs on disk -> label ->
  metrics) with a tiny random UNet, each in its own process for a clean peak RSS. Bars: time(16k)
  within 1.2x of 16 x time(1k) and peak memory within 1.3x: images stream to disk.
- calibration: one `scale: auto` cell (distribution guidance, skin tone to uniform, on
  zoo:synthfaces-ddpm, batch 64) calibrated from nothing (no shipped record, no earlier trials),
  then that cell's own 1,000 images generated at the chosen scale, in one run. Bar: calibration
  seconds <= generation seconds (ratio <= 1).
- sd15 (only with --device cuda): a random SD-1.5-sized UNet (and VAE) at 512 px, images/s with
  and without distribution guidance.

    OMP_NUM_THREADS=1 python benchmarks/perf.py                 # -> benchmarks/results/perf.json
    OMP_NUM_THREADS=1 python benchmarks/perf.py --quick --out /tmp/perf.json   # smoke run
    OMP_NUM_THREADS=1 python benchmarks/perf.py --skip guidance metrics scaling sd15 \
        --out benchmarks/results/perf_calibration_cost.json          # the calibration cost alone
    OMP_NUM_THREADS=1 python benchmarks/perf.py --skip guidance metrics scaling calibration sd15 \
        --out benchmarks/results/perf_text_methods.json              # the text-only methods alone
    python benchmarks/perf.py --device cuda --threads 8         # adds sd15 (a GPU machine)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "full": {"calibration": {"n": 1000, "batch": 64, "steps": 25},
             "batch": 32, "steps": 25, "repeats": 3, "probe_n": 64, "metric_samples": 100_000, "metric_repeats": 3,
             "sizes": [1000, 4000, 16000], "scaling_batch": 64, "scaling_steps": 2,
             "sd": {"size": "sd15", "batch": 8, "steps": 50, "repeats": 3}},
    "quick": {"calibration": {"n": 16, "batch": 8, "steps": 2, "seeds": 16},
              "batch": 4, "steps": 3, "repeats": 1, "probe_n": 8, "metric_samples": 2000, "metric_repeats": 1,
              "sizes": [8, 32], "scaling_batch": 8, "scaling_steps": 1,
              "sd": {"size": "tiny", "batch": 2, "steps": 2, "repeats": 1}},
}
ZOO_MODEL, ATTRIBUTE, PROBE_LABELER = "synthfaces-ddpm", "skin_tone", "synthfaces-pseudo"
BARS = {"guided_h": 1.10, "loop": 1.05, "scaling_time": 1.2, "scaling_memory": 1.3, "calibration": 1.0}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(runs: dict, repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds of each run, `repeats` rounds in turn after one warm-up round."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(round(_timed(fn, device), 4))
    return times


# -- guidance and loop overhead on the zoo model ---------------------------------------------------

def zoo_probes(adapter, labeler, cfg: dict, device: str) -> tuple[list, str]:
    """The zoo's shipped probe if there is one, else a small one trained for this run."""
    from audit.probes.probe import Probe
    from audit.probes.train import train_probes
    from audit.zoo import WEIGHTS_DIR

    shipped = WEIGHTS_DIR / "probes" / ZOO_MODEL / PROBE_LABELER / ATTRIBUTE
    if (shipped / "probe.json").exists():
        return [Probe.load(shipped).to(device)], str(shipped.relative_to(WEIGHTS_DIR.parent.parent.parent))
    probes = train_probes(adapter, labeler, [ATTRIBUTE], n=cfg["probe_n"], steps=cfg["steps"],
                          batch_size=cfg["batch"])
    return [probes[ATTRIBUTE].to(device)], f"trained for this run (n={cfg['probe_n']})"


def guidance_and_loop(cfg: dict, device: str) -> dict:
    from audit.methods.distribution_guidance import DistributionGuidance
    from audit.methods.sample_guidance import SampleGuidance
    from audit.methods.self_debias import SelfDebias
    from audit.methods.universal_guidance import UniversalGuidance
    from audit.run.build import UnguidedSamples
    from audit.zoo import load_adapter
    from audit.zoo.labelers import SynthFacesLabeler

    adapter = load_adapter(ZOO_MODEL, device=device)
    labeler = SynthFacesLabeler(PROBE_LABELER, device=device)
    probes, probe_source = zoo_probes(adapter, labeler, cfg, device)
    target = [1 / len(probes[0].classes)] * len(probes[0].classes)
    seeds, steps = list(range(cfg["batch"])), cfg["steps"]
    methods = {
        "none": None,
        "distribution_guidance": DistributionGuidance(probes, target, scale=1.0, path="h"),
        "sample_guidance": SampleGuidance(probes, target, scale=1.0, path="h"),
        "distribution_guidance_x": DistributionGuidance(probes, target, scale=1.0, path="x"),
        "universal_guidance": UniversalGuidance(labeler, [ATTRIBUTE], target, scale=1.0),
    }
    with tempfile.TemporaryDirectory() as cache:
        unguided = UnguidedSamples(adapter, None, steps, 1.0, cfg["batch"], Path(cache), [])
        methods["self_debias"] = SelfDebias(target, unguided, n=max(16, cfg["probe_n"]))
        for method in methods.values():
            if method is not None:
                method.start_cell(seeds)  # self_debias fits its clusters here, before the timing
    runs = {name: (lambda m=m: adapter.generate(seeds, steps=steps, method=m)) for name, m in methods.items()}
    times = interleaved(runs, cfg["repeats"], device)
    base = statistics.median(times["none"])
    ratios = {name: round(statistics.median(t) / base, 4) for name, t in times.items()}
    guidance = {"model": f"zoo:{ZOO_MODEL}", "attribute": ATTRIBUTE, "probe": probe_source, "batch": len(seeds),
                "steps": steps, "repeats": cfg["repeats"], "seconds": times, "ratio_to_none": ratios,
                "target": BARS["guided_h"],
                "passes": all(ratios[m] <= BARS["guided_h"] for m in ("distribution_guidance", "sample_guidance"))}

    x = adapter.initial_noise(seeds)
    timesteps = adapter.timesteps(steps)

    @torch.no_grad()
    def bare():
        for t in timesteps:
            adapter.unet(x, t)

    loop_times = interleaved({"generate": runs["none"], "bare_unet": bare}, cfg["repeats"], device)
    ratio = statistics.median(loop_times["generate"]) / statistics.median(loop_times["bare_unet"])
    loop = {"model": f"zoo:{ZOO_MODEL}", "batch": len(seeds), "steps": steps, "seconds": loop_times,
            "ratio": round(ratio, 4), "target": BARS["loop"], "passes": ratio <= BARS["loop"]}
    return {"guidance_overhead": guidance, "loop_overhead": loop}


def text_methods(cfg: dict, device: str) -> dict:
    """Wall time of the text-only methods / `none` on the zoo's text model, interleaved as above."""
    from audit.methods.prompt_projection import PromptProjection
    from audit.methods.semantic_guidance import SemanticGuidance
    from audit.zoo import load_adapter

    adapter = load_adapter("synthfaces-t2i", device=device)
    phrases, target = ["with light skin", "with dark skin"], [0.5, 0.5]
    seeds, steps, prompt, guidance_scale = list(range(cfg["batch"])), cfg["steps"], "a photo of a person", 2.0
    methods = {"none": None, "prompt_projection": PromptProjection(phrases, noise=1.0),
               "semantic_guidance": SemanticGuidance(phrases, target)}
    for method in methods.values():
        if method is not None:
            method.start_cell(seeds)
    runs = {name: (lambda m=m: adapter.generate(seeds, prompts=[prompt] * len(seeds), steps=steps,
                                                guidance_scale=guidance_scale, method=m))
            for name, m in methods.items()}
    times = interleaved(runs, cfg["repeats"], device)
    base = statistics.median(times["none"])
    return {"model": "zoo:synthfaces-t2i", "guidance_scale": guidance_scale, "batch": len(seeds), "steps": steps,
            "repeats": cfg["repeats"], "seconds": times,
            "ratio_to_none": {name: round(statistics.median(t) / base, 4) for name, t in times.items()}}


# -- scaling of a cell through the runner ----------------------------------------------------------

def tiny_model_dir(path: Path) -> Path:
    """A random 32x32 UNet with the zoo's block layout at a fraction of the width, saved as a
    diffusers pipeline: generation is cheap, so the store and labeling costs show."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from audit.zoo.recipes import SCHEDULER

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, attention_head_dim=8, norm_num_groups=4)
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler(**SCHEDULER)).save_pretrained(path)
    return path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def scaling_cell(samples: int, model_dir: str, out: str, batch: int, steps: int) -> dict:
    """One cell of `samples` images through run_suite, in this (fresh) process."""
    from audit.run.suite import run_suite
    from audit.spec import Suite

    suite = Suite.model_validate({
        "name": f"scaling-{samples}", "models": [{"name": "tiny", "source": model_dir, "steps": steps}],
        "methods": [{"name": "none"}], "settings": [{"attributes": [ATTRIBUTE]}], "samples": samples,
        "batch_size": batch, "labelers": ["synthfaces-eval"], "metrics": ["fairness"]})
    before = _rss_mb()
    start = time.perf_counter()
    frame = run_suite(suite, out)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    images = len(list((Path(out) / "cells").glob("*/images/*.png")))
    return {"samples": samples, "seconds": round(seconds, 3), "seconds_per_1k": round(1000 * seconds / samples, 3),
            "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
            "peak_minus_before_mb": round(peak - before, 1), "images_on_disk": images,
            "status": frame["status"].tolist()}


def scaling(cfg: dict, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="diffaudit-perf-") as tmp:
        model_dir = tiny_model_dir(Path(tmp) / "tiny-ddpm")
        cells = []
        for samples in cfg["sizes"]:
            command = [sys.executable, str(Path(__file__).resolve()), "--scaling-cell", str(samples),
                       "--model-dir", str(model_dir), "--scaling-out", str(Path(tmp) / f"out-{samples}"),
                       "--scaling-batch", str(cfg["scaling_batch"]), "--scaling-steps", str(cfg["scaling_steps"]),
                       "--threads", str(threads)]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"scaling cell {samples} failed: {done.stderr.strip().splitlines()[-1:]}")
            cell = json.loads(done.stdout.strip().splitlines()[-1])
            cell["process_seconds"] = round(time.perf_counter() - start, 3)
            cells.append(cell)
    small, large = cells[0], cells[-1]
    factor = large["samples"] / small["samples"]
    time_ratio = large["seconds"] / (factor * small["seconds"])
    memory_ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    # Fixed costs (loading the model and labeler) flatter the ratio; the marginal cost of each
    # extra 1k samples between consecutive sizes is what shows linear time.
    marginal = [round(1000 * (b["seconds"] - a["seconds"]) / (b["samples"] - a["samples"]), 3)
                for a, b in zip(cells, cells[1:], strict=False)]
    return {"model": "tiny random UNet2DModel (8, 16, 16, 16) at 32 px", "steps": cfg["scaling_steps"],
            "batch": cfg["scaling_batch"], "labeler": "synthfaces-eval", "metrics": ["fairness"], "cells": cells,
            "marginal_seconds_per_1k": marginal, "time_ratio": round(time_ratio, 4),
            "time_target": BARS["scaling_time"], "memory_ratio": round(memory_ratio, 4),
            "memory_target": BARS["scaling_memory"],
            "passes": time_ratio <= BARS["scaling_time"] and memory_ratio <= BARS["scaling_memory"]}


# -- calibration against the cell it calibrates ---------------------------------------------------

def calibration_cost(cfg: dict, device: str) -> dict:
    """Seconds to calibrate one cell from nothing and to generate its images at the chosen scale."""
    from unittest import mock

    from audit.registry import METHODS, resolve
    from audit.run import calibration
    from audit.run.context import RunContext
    from audit.run.probes import get_probes
    from audit.spec import Suite, plan
    from audit.store import RunStore

    suite = Suite.model_validate({
        "name": "calibration-cost", "models": [{"name": ZOO_MODEL, "source": f"zoo:{ZOO_MODEL}",
                                                "steps": cfg["steps"]}],
        "methods": [{"name": "distribution_guidance", "params": {"scale": "auto", "loss": "chi2"}}],
        "settings": [{"attributes": [ATTRIBUTE], "target": "uniform"}], "samples": cfg["n"],
        "batch_size": cfg["batch"], "labelers": ["synthfaces-eval"], "probe_labeler": PROBE_LABELER,
        "metrics": ["fairness"]})
    with tempfile.TemporaryDirectory(prefix="diffaudit-calibration-") as tmp:
        lines: list[str] = []
        ctx = RunContext(suite=suite, store=RunStore(Path(tmp) / "out"), log=lines.append, device=device)
        (cell,) = plan(suite)
        factory = resolve(METHODS, cell.method.name, "method")
        probes, target = get_probes(ctx, cell), cell.setting.target_vector()
        n = cfg.get("seeds") or calibration.calibration_samples(len(target))
        ctx.adapter(cell), ctx.labeler(PROBE_LABELER)  # loaded before the clock starts, as in a run
        with mock.patch.object(calibration, "shipped_calibration", lambda source, record: None):  # none shipped
            start = time.perf_counter()
            chosen = calibration.calibrate(ctx, cell, factory, {"probes": probes, "target": target},
                                           dict(cell.method.params), n=n)
            calibrating = time.perf_counter() - start
        (record,) = [json.loads(p.read_text()) for p in (Path(tmp) / "out" / "calibration").glob("*.json")]
        method = factory(probes=probes, target=target, **{**cell.method.params, **chosen})
        seeds = list(range(cfg["n"]))
        method.start_cell(seeds)
        adapter = ctx.adapter(cell)
        start = time.perf_counter()
        for i in range(0, len(seeds), cfg["batch"]):
            adapter.generate(seeds[i:i + cfg["batch"]], steps=cfg["steps"], method=method)
        generating = time.perf_counter() - start
    ratio = calibrating / generating
    return {"model": f"zoo:{ZOO_MODEL}", "method": "distribution_guidance", "attribute": ATTRIBUTE,
            "setting": "uniform", "batch": cfg["batch"], "steps": cfg["steps"], "rule": calibration.RULE,
            "calibration_seeds": n, "chosen": chosen, "calibration_images": record["images"],
            "trials": {"full": [t["scale"] for t in record["tried"]], "coarse": [t["scale"] for t in record["coarse"]],
                       "aims": len(record["aimed"])},
            "calibration_seconds": round(calibrating, 1), "generated_images": cfg["n"],
            "generation_seconds": round(generating, 1), "ratio": round(ratio, 4), "target": BARS["calibration"],
            "passes": ratio <= BARS["calibration"], "progress_lines": len(lines)}


# -- SD-1.5-sized throughput (a GPU) ---------------------------------------------------------------

def sd_adapter(size: str, device: str, dtype: torch.dtype, workdir: Path):
    """A random text-conditioned model: SD 1.5's UNet and VAE shapes ("sd15", 512 px) or a tiny
    stand-in ("tiny") that checks this code path on a CPU. The text encoder is a one-layer CLIP
    of SD's width: its cost is once per batch."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from audit.models.adapter import ModelAdapter
    from audit.zoo.tokenizer import save_tokenizer

    sd = size == "sd15"
    width = 768 if sd else 16
    tokenizer = save_tokenizer(workdir / "tokenizer", max_length=77 if sd else 16)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
        num_attention_heads=12 if sd else 2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    if sd:  # diffusers' defaults are SD 1.x's UNet; 64x64 latents decode to 512 px
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            sample_size=512)
    else:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
                                    norm_num_groups=4, cross_attention_dim=width)
        vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                            norm_num_groups=4, sample_size=16)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    parts = {"unet": unet, "text_encoder": text, "vae": vae}
    for part in parts.values():
        part.to(device, dtype).eval().requires_grad_(False)
    return ModelAdapter(scheduler=scheduler, tokenizer=tokenizer, device=device, dtype=dtype,
                        model_id=f"random-{size}", **parts)


def sd_throughput(cfg: dict, device: str, dtype: torch.dtype) -> dict:
    from audit.methods.distribution_guidance import DistributionGuidance
    from audit.probes.probe import Probe

    with tempfile.TemporaryDirectory(prefix="diffaudit-sd-") as tmp:
        adapter = sd_adapter(cfg["size"], device, dtype, Path(tmp))
    seeds, steps = list(range(cfg["batch"])), cfg["steps"]
    prompts = ["a photo of a doctor"] * len(seeds)
    recorded = adapter.generate(seeds[:1], prompts=prompts[:1], steps=1, guidance_scale=7.5, record_h=True).h[0]
    torch.manual_seed(1)
    probe = Probe("gender", ["female", "male"], adapter.timesteps(steps), recorded.shape[-1])
    with torch.no_grad():
        probe.weight.normal_(0, recorded.shape[-1] ** -0.5)
    guided = DistributionGuidance([probe.to(device).eval().requires_grad_(False)], [0.5, 0.5], scale=1.0, path="h")
    runs = {name: (lambda m=m: adapter.generate(seeds, prompts=prompts, steps=steps, guidance_scale=7.5, method=m))
            for name, m in {"none": None, "distribution_guidance": guided}.items()}
    times = interleaved(runs, cfg["repeats"], device)
    rate = {name: round(len(seeds) / statistics.median(t), 4) for name, t in times.items()}
    return {"model": f"random {cfg['size']} UNet2DConditionModel + AutoencoderKL (h dim {recorded.shape[-1]})",
            "device": device, "dtype": str(dtype).removeprefix("torch."), "batch": len(seeds), "steps": steps,
            "guidance_scale": 7.5, "seconds": times, "images_per_s": rate,
            "ratio": round(statistics.median(times["distribution_guidance"]) / statistics.median(times["none"]), 4),
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}


# -- main ------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke configuration (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add the SD-1.5-sized throughput")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="dtype of the SD-sized model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 cores are shared here)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["guidance", "text", "metrics", "scaling", "calibration", "sd15"])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "perf.json")
    parser.add_argument("--scaling-cell", type=int, help=argparse.SUPPRESS)  # child process of `scaling`
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--scaling-out", help=argparse.SUPPRESS)
    parser.add_argument("--scaling-batch", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--scaling-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scaling_cell:
        print(json.dumps(scaling_cell(args.scaling_cell, args.model_dir, args.scaling_out, args.scaling_batch,
                                      args.scaling_steps)))
        return

    mode = "quick" if args.quick else "full"
    cfg = CONFIGS[mode]
    command = "OMP_NUM_THREADS=1 python benchmarks/perf.py" + (" --quick" if args.quick else "") + \
        (f" --device {args.device}" if args.device != "cpu" else "") + \
        (f" --threads {args.threads}" if args.threads != 1 else "") + \
        (f" --skip {' '.join(args.skip)}" if args.skip else "") + \
        (f" --out {args.out}" if args.out != HERE / "results" / "perf.json" else "")
    result: dict = {"mode": mode, "command": command, "device": args.device,
                    "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
                                "platform": platform.platform()}}
    started = time.perf_counter()
    if "guidance" not in args.skip:
        result.update(guidance_and_loop(cfg, args.device))
    if "text" not in args.skip:
        result["text_method_overhead"] = text_methods(cfg, args.device)
    if "metrics" not in args.skip:
        sys.path.insert(0, str(HERE))
        from metrics_speed import measure

        result["metrics"] = measure(cfg["metric_samples"], cfg["metric_repeats"])
    if "scaling" not in args.skip:
        result["scaling"] = scaling(cfg, args.threads)
    if "calibration" not in args.skip:
        result["calibration"] = calibration_cost(cfg["calibration"], args.device)
    if "sd15" not in args.skip:
        if args.device.startswith("cuda") or args.quick:  # quick: the tiny stand-in checks the code path
            result["sd15"] = sd_throughput(cfg["sd"], args.device, getattr(torch, args.dtype))
        else:
            result["sd15"] = {"skipped": "needs a GPU: python benchmarks/perf.py --device cuda"}
    result["seconds_total"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
