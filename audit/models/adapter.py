"""ModelAdapter: owns the unrolled denoising loop of a diffusers UNet (+ optional text encoder,
classifier-free guidance and VAE).

Image i of a cell always starts from the noise of its own seed, whatever the batch it is
sampled in, so cells are reproducible and resumable batch by batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from audit.models.hspace import HSpaceHook


@dataclass
class ModelAdapter:
    unet: torch.nn.Module
    scheduler: object
    text_encoder: torch.nn.Module | None = None
    tokenizer: object | None = None
    vae: torch.nn.Module | None = None
    model_id: str = "unnamed"
    revision: str | None = None
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    info: dict = field(default_factory=dict)
    _hook: HSpaceHook | None = field(default=None, repr=False)

    @property
    def conditional(self) -> bool:
        return self.text_encoder is not None

    @classmethod
    def from_directory(cls, path: str | Path, model_id: str | None = None, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> ModelAdapter:
        """Load a diffusers-format model directory (unet/, scheduler/, optional text_encoder/,
        tokenizer/, vae/)."""
        import json

        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNet2DModel

        path = Path(path)
        index_file = path / "model_index.json"
        if not index_file.exists():
            raise FileNotFoundError(f"{index_file} not found: not a diffusers model directory")
        index = json.loads(index_file.read_text())
        unet_cls = UNet2DConditionModel if index["unet"][1] == "UNet2DConditionModel" else UNet2DModel
        unet = unet_cls.from_pretrained(path / "unet", torch_dtype=dtype).to(device).eval()
        scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
        text_encoder = tokenizer = vae = None
        if "text_encoder" in index:
            from transformers import CLIPTextModel, CLIPTokenizer

            text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=dtype)
            text_encoder = text_encoder.to(device).eval()
            tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
        if "vae" in index and index["vae"][0] is not None:
            vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=dtype).to(device).eval()
        return cls(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                   vae=vae, model_id=model_id or str(path), device=device, dtype=dtype)

    @classmethod
    def from_zoo(cls, name: str, device: str = "cpu") -> ModelAdapter:
        from audit.zoo import is_trained, zoo_path

        if not is_trained(name):
            raise FileNotFoundError(f"zoo model {name!r} has no weights: run `diffaudit zoo train {name}`")
        return cls.from_directory(zoo_path(name), model_id=f"zoo:{name}", device=device)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Noise for each image from its own seed (CPU generator, so it is device-independent)."""
        channels = self.unet.config.in_channels
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        noise = [torch.randn((channels, *size), generator=torch.Generator().manual_seed(int(s)))
                 for s in seeds]
        return torch.stack(noise).to(self.device, self.dtype)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def timesteps(self, steps: int) -> list[int]:
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        return [int(t) for t in scheduler.timesteps]

    def hspace(self) -> HSpaceHook:
        """The mid-block hook (attached once, on first use)."""
        if self._hook is None:
            self._hook = HSpaceHook(self.unet)
        return self._hook

    def unet_output(self, x: torch.Tensor, t, context: torch.Tensor | None,
                    guidance_scale: float) -> torch.Tensor:
        """The UNet's prediction at (x, t), with classifier-free guidance when a negative
        context is stacked in front of the positive one."""
        model_in = x
        if context is None:
            return self.unet(model_in, t).sample
        if context.shape[0] == 2 * x.shape[0]:
            both = self.unet(torch.cat([model_in] * 2), t, encoder_hidden_states=context).sample
            uncond, cond = both.chunk(2)
            return uncond + guidance_scale * (cond - uncond)
        return self.unet(model_in, t, encoder_hidden_states=context).sample

    def predict_x0(self, scheduler, x: torch.Tensor, t, output: torch.Tensor) -> torch.Tensor:
        """x0 implied by the model output under the scheduler's prediction type."""
        a = scheduler.alphas_cumprod.to(x.device)[int(t)].to(x.dtype)
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            return (x - (1 - a).sqrt() * output) / a.sqrt()
        if kind == "v_prediction":
            return a.sqrt() * x - (1 - a).sqrt() * output
        return output

    def generate(self, seeds: Sequence[int], prompts: Sequence[str] | None = None, steps: int = 50,
                 guidance_scale: float = 1.0, negative_prompt: str = "", method=None,
                 record_h: bool = False) -> Generated:
        """Images [N, 3, H, W] in [0, 1] for the given per-image seeds (and prompts), under a
        method's hooks; optionally the h recorded at every step ([N, D] per step)."""
        from audit.methods.base import BatchContext, Method

        method = method or Method()
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        x = self.initial_noise(seeds) * scheduler.init_noise_sigma
        generators = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]
        context = None
        if self.conditional:
            if prompts is None or len(prompts) != len(seeds):
                raise ValueError("a text-conditioned model needs one prompt per seed")
            with torch.no_grad():
                context = self.encode_prompts(prompts)
                if guidance_scale != 1.0:
                    context = torch.cat([self.encode_prompts([negative_prompt] * len(seeds)), context])
        batch = BatchContext(adapter=self, scheduler=scheduler, seeds=list(seeds), prompts=prompts,
                             context=context, guidance_scale=guidance_scale, steps=steps)
        method.start_batch(batch)
        hook = self.hspace() if (record_h or method.edits_h) else None
        recorded: list[torch.Tensor] = []
        for i, t in enumerate(scheduler.timesteps):
            batch.step_index, batch.t = i, int(t)
            x = method.on_x(x, batch)
            if hook is not None:
                hook.edit = lambda h: _edit_cond_half(h, method, batch, len(seeds))
                hook.record, hook.recorded = record_h, []
            try:
                with torch.no_grad():
                    out = self.unet_output(scheduler.scale_model_input(x, t), t, context, guidance_scale)
            finally:
                if hook is not None:
                    hook.edit, hook.record = None, False
            if record_h:
                recorded.append(hook.recorded[-1][-len(seeds):].flatten(1))
            out = method.on_output(out, x, batch)
            x = scheduler.step(out, t, x, generator=generators).prev_sample
        with torch.no_grad():
            if self.vae is not None:
                x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        images = (x.float() / 2 + 0.5).clamp(0, 1).cpu()
        return Generated(images=images, h=recorded if record_h else None, stats=method.end_batch(batch))


@dataclass
class Generated:
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    h: list[torch.Tensor] | None  # per step [N, C*h*w] (the conditional half under CFG)
    stats: dict


def _edit_cond_half(h: torch.Tensor, method, batch, n: int) -> torch.Tensor | None:
    """Let the method edit h; under classifier-free guidance the edit is computed on the
    conditional half and the same displacement is applied to the unconditional half, so the
    guided combination moves by exactly the method's edit."""
    if h.shape[0] == n:
        return method.on_h(h, batch)
    uncond, cond = h[:-n], h[-n:]
    new = method.on_h(cond, batch)
    if new is None:
        return None
    return torch.cat([uncond + (new - cond), new])
