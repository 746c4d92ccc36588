"""How much a text-to-image zoo model reads each attribute phrase: a cheap training monitor.

For each attribute, two prompts that differ only in that attribute's phrase are encoded; the
script prints (1) the distance between their text-encoder hidden states and (2) the RMS
difference of the UNet's predictions for them on the same noisy ground-truth images at several
timesteps. An attribute the model follows moves the prediction as much as skin tone does; one it
ignores moves it ~100x less, whatever the guidance scale. Seconds on one CPU thread, so it can
run beside training on every export.

    python benchmarks/research/t2i_prompt_sensitivity.py audit/zoo/wip/synthfaces-t2i [--json FILE]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer

PAIRS = {
    "skin_tone": ("with dark skin", "with light skin"),
    "hair_length": ("with long hair", "with short hair"),
    "hair_color": ("with gray hair", "with black hair"),
    "eyeglasses": ("wearing eyeglasses", "without eyeglasses"),
    "smile": ("smiling", "not smiling"),
}
SUBJECT = "a photo of a person"


def main(model_dir: Path, timesteps: str = "900,700,500,300", n: int = 16,
         json_file: Path | None = typer.Option(None, "--json", help="Also write the figures here.")):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from audit.zoo.synthfaces import BIASED_WORLD, generate
    from audit.zoo.train_diffusion import encode_text

    torch.set_num_threads(1)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", torch_dtype=torch.float32).eval()
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder", torch_dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    scheduler = DDIMScheduler.from_pretrained(model_dir / "scheduler")
    x0 = generate(n, BIASED_WORLD, seed=123).tensor()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    step = json.loads((model_dir / "training.json").read_text()).get("steps")
    result = {"model": str(model_dir), "step": step, "attributes": {}}
    for attribute, (a, b) in PAIRS.items():
        h = encode_text(tokenizer, text_encoder, [f"{SUBJECT} {a}", f"{SUBJECT} {b}"])
        row = {"prompts": [a, b], "embedding_distance": float((h[0] - h[1]).norm()),
               "embedding_norm": float(h[0].norm()), "prediction_rms": {}}
        with torch.no_grad():
            for t in (int(v) for v in timesteps.split(",")):
                tt = torch.full((n,), t)
                x_t = scheduler.add_noise(x0, noise, tt)
                pa = unet(x_t, tt, encoder_hidden_states=h[:1].expand(n, -1, -1)).sample
                pb = unet(x_t, tt, encoder_hidden_states=h[1:].expand(n, -1, -1)).sample
                row["prediction_rms"][t] = float((pa - pb).pow(2).mean().sqrt())
        result["attributes"][attribute] = row
    print(f"{model_dir} (step {step}): text-encoder distance | prediction RMS difference at t = {timesteps}")
    for attribute, row in result["attributes"].items():
        rms = "  ".join(f"{v:.4f}" for v in row["prediction_rms"].values())
        print(f"  {attribute:<12} {row['embedding_distance']:6.2f} / {row['embedding_norm']:5.1f} | {rms}")
    if json_file:
        json_file.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
