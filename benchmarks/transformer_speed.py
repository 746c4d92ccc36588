"""Speed of the transformer families on a GPU: diffaudit's adapter vs the family's own diffusers
pipeline, and distribution guidance vs none, on random networks of the released models' shapes.

- sd3: an SD3-medium-sized MMDiT (24 joint blocks, 24 heads x 64, patch 2, 16 latent channels) at
  1024 px with classifier-free guidance; flux: a FLUX.1-sized transformer (19 double- and 38
  single-stream blocks, 24 heads x 128, guidance embedding) at 1024 px, no CFG. Both with the full
  16-channel VAE. The text encoders keep only the released widths (one layer each): prompts are
  encoded once per batch, so their depth does not change a ratio.
- adapter / pipeline: images/s of ModelAdapter.generate over images/s of the family's pipeline,
  same latents, steps, guidance and dtype, runs interleaved so drifting load hits both alike
  (goal >= 0.97: one unrolled loop with hooks costs nothing measurable).
- max_pixel_difference: adapter vs pipeline images on the same latents (0 up to float rounding).
- guided / none: seconds of distribution guidance on h (a fixed random probe) over plain
  sampling through the adapter (goal <= 1.05).

`--size tiny` builds the same pipelines at test size, which checks the code path on a CPU in
seconds (tests/test_perf_bench.py runs it); the figures that mean anything are the GPU ones:

    python benchmarks/transformer_speed.py --size full --device cuda --dtype bfloat16 \\
        --out benchmarks/results/transformer_speed_cuda.json     # as benchmarks/gpu_session.sh runs it
    OMP_NUM_THREADS=1 python benchmarks/transformer_speed.py --size tiny --out /tmp/ts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from perf import interleaved  # noqa: E402

GOALS = {"adapter_vs_pipeline": 0.97, "guided_vs_none": 1.05}
PROMPT = "a photo of a doctor"


def tokenizers(workdir: Path):
    """A CLIP tokenizer padding to 77 and a T5 tokenizer with T5's 512, as the released models'."""
    from audit.zoo.tokenizer import save_tokenizer, t5_tokenizer

    return save_tokenizer(workdir / "clip", max_length=77), t5_tokenizer()


def clip_encoder(tokenizer, hidden: int, projection: int | None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=1, num_attention_heads=max(1, hidden // 64),
                            max_position_embeddings=77, projection_dim=projection or hidden,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5_encoder(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=64, d_ff=2 * width, num_layers=1,
                                   num_heads=max(1, width // 64), relative_attention_num_buckets=32,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def vae(full: bool, shift: float, scale: float):
    from diffusers import AutoencoderKL

    if full:  # SD3's / FLUX.1's VAE: 16 latent channels, 8x downsampling
        return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, layers_per_block=2,
                             sample_size=1024, scaling_factor=scale, shift_factor=shift, use_quant_conv=False,
                             use_post_quant_conv=False)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         sample_size=64, scaling_factor=scale, shift_factor=shift, use_quant_conv=False,
                         use_post_quant_conv=False)


def sd3_pipeline(full: bool, workdir: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip, t5 = tokenizers(workdir)
    if full:  # stabilityai/stable-diffusion-3-medium's transformer config
        transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                            attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                            caption_projection_dim=1536, pooled_projection_dim=2048,
                                            out_channels=16, pos_embed_max_size=192)
        encoders = dict(text_encoder=clip_encoder(clip, 768, 768), text_encoder_2=clip_encoder(clip, 1280, 1280),
                        text_encoder_3=t5_encoder(t5, 4096))
    else:
        transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=4, num_layers=2,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                            caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
                                            pos_embed_max_size=32)
        encoders = dict(text_encoder=clip_encoder(clip, 16, 16), text_encoder_2=clip_encoder(clip, 16, 16),
                        text_encoder_3=t5_encoder(t5, 64))
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae(full, 0.0609, 1.5305), tokenizer=clip, tokenizer_2=clip, tokenizer_3=t5,
                                    **encoders)


def flux_pipeline(full: bool, workdir: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip, t5 = tokenizers(workdir)
    if full:  # black-forest-labs/FLUX.1-dev's transformer config (diffusers' defaults)
        transformer = FluxTransformer2DModel(guidance_embeds=True)
        encoders = dict(text_encoder=clip_encoder(clip, 768, None), text_encoder_2=t5_encoder(t5, 4096))
    else:
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                             attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                             pooled_projection_dim=16, axes_dims_rope=(2, 2, 4), guidance_embeds=True)
        encoders = dict(text_encoder=clip_encoder(clip, 16, None), text_encoder_2=t5_encoder(t5, 64))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae(full, 0.1159, 0.3611),
                        tokenizer=clip, tokenizer_2=t5, **encoders)


FAMILIES = {"sd3": (sd3_pipeline, 4.5), "flux": (flux_pipeline, 3.5)}  # guidance: CFG for SD3, the embedding for Flux


def adapter_for(name: str, pipe, device: str, dtype: torch.dtype):
    """The adapter on the pipeline's own modules (nothing copied), as from_directory would build it."""
    from audit.models.adapter import ModelAdapter
    from audit.models.families.flux import FluxFamily
    from audit.models.families.sd3 import SD3Family

    family = {"sd3": SD3Family, "flux": FluxFamily}[name](pipe)
    return ModelAdapter(unet=None, scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder,
                        tokenizer=pipe.tokenizer, family=family, model_id=f"random-{name}", device=device,
                        dtype=dtype)


def random_probe(adapter, steps: int, guidance: float):
    """A linear probe on h along fixed random directions: the same work as a trained one."""
    from audit.methods.distribution_guidance import DistributionGuidance
    from audit.probes.probe import Probe

    h = adapter.generate([0], prompts=[PROMPT], steps=1, guidance_scale=guidance, record_h=True).h[0]
    torch.manual_seed(1)
    probe = Probe("gender", ["female", "male"], adapter.timesteps(steps), h.shape[-1])
    with torch.no_grad():
        probe.weight.normal_(0, h.shape[-1] ** -0.5)
    probe = probe.to(adapter.device).eval().requires_grad_(False)
    return DistributionGuidance([probe], [0.5, 0.5], scale=1.0, path="h"), int(h.shape[-1])


def measure(name: str, size: str, device: str, dtype: torch.dtype, batch: int, steps: int, repeats: int) -> dict:
    build, guidance = FAMILIES[name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffaudit-ts-") as tmp, torch.device(device):
        torch.manual_seed(0)
        pipe = build(size == "full", Path(tmp))
    pipe.to(device, dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    adapter = adapter_for(name, pipe, device, dtype)
    built = time.perf_counter() - started
    seeds, prompts = list(range(batch)), [PROMPT] * batch
    side = adapter.family.noise_shape()[-1] * adapter.family.vae_scale_factor  # latent side x VAE factor
    method, h_dim = random_probe(adapter, steps, guidance)
    noise = adapter.initial_noise(seeds)
    runs = {
        "pipeline": lambda: pipe(prompt=prompts, latents=noise, num_inference_steps=steps, guidance_scale=guidance,
                                 height=side, width=side, output_type="pt"),
        "adapter": lambda: adapter.generate(seeds, prompts=prompts, steps=steps, guidance_scale=guidance),
        "distribution_guidance": lambda: adapter.generate(seeds, prompts=prompts, steps=steps,
                                                          guidance_scale=guidance, method=method),
    }
    with torch.no_grad():
        difference = (runs["adapter"]().images.float() - runs["pipeline"]().images.float()).abs().max().item()
    times = interleaved(runs, repeats, device)  # one warm-up round of each first
    median = {k: statistics.median(v) for k, v in times.items()}
    parameters = sum(p.numel() for p in pipe.transformer.parameters())
    return {"family": name, "size": size, "transformer": type(pipe.transformer).__name__,
            "transformer_parameters": parameters, "image_px": side, "h_dim": h_dim, "batch": batch, "steps": steps,
            "guidance": guidance, "device": device, "dtype": str(dtype).removeprefix("torch."),
            "build_seconds": round(built, 1), "max_pixel_difference": difference, "seconds": times,
            "images_per_s": {k: round(batch / v, 4) for k, v in median.items()},
            "adapter_vs_pipeline": round(median["pipeline"] / median["adapter"], 4),
            "guided_vs_none": round(median["distribution_guidance"] / median["adapter"], 4),
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.startswith("cuda") else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--families", nargs="*", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch", type=int, default=None, help="images per batch (full: 2, tiny: 2)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (full: 8, tiny: 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds after a warm-up (full: 3, tiny: 1)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "transformer_speed.json")
    args = parser.parse_args()
    full = args.size == "full"
    batch, steps = args.batch or 2, args.steps or (8 if full else 2)
    repeats = args.repeats or (3 if full else 1)
    dtype = getattr(torch, args.dtype)
    result = {"command": " ".join(["python benchmarks/transformer_speed.py", *sys.argv[1:]]), "goals": GOALS,
              "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None, "families": {}}
    for name in args.families:
        result["families"][name] = measure(name, args.size, args.device, dtype, batch, steps, repeats)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # each family as soon as it is measured
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
