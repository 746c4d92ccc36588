"""ModelAdapter: owns the unrolled denoising loop of a diffusers UNet (+ optional text encoder,
classifier-free guidance and VAE).

Families: unconditional UNet2DModel pipelines (DDPM/DDIM), Stable Diffusion 1.x/2.x (one CLIP
text encoder, VAE latents) and SDXL (two text encoders; the pooled text embedding and the size
conditions reach the UNet as `added_cond_kwargs`, injected by a pre-hook so every UNet call,
including the guidance methods' encoder-only passes, gets them).

Image i of a cell always starts from the noise of its own seed, whatever the batch it is
sampled in, so cells are reproducible and resumable batch by batch.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from audit.errors import SuiteError
from audit.models.batch_invariant import make_batch_invariant
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
    text_encoder_2: torch.nn.Module | None = None  # SDXL's second encoder (with projection)
    tokenizer_2: object | None = None
    zero_empty_negative: bool = False  # SDXL's force_zeros_for_empty_prompt
    _hook: HSpaceHook | None = field(default=None, repr=False)
    _added: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if str(self.device) == "cpu":  # bit-identical images whatever the batch (see batch_invariant.py)
            self.info["batch_invariant_linear_layers"] = make_batch_invariant(
                self.unet, self.text_encoder, self.text_encoder_2, self.vae)
        if getattr(self.unet.config, "addition_embed_type", None) == "text_time":
            self.unet.register_forward_pre_hook(self._add_conditions, with_kwargs=True)

    @property
    def conditional(self) -> bool:
        return self.text_encoder is not None

    @classmethod
    def from_directory(cls, path: str | Path, model_id: str | None = None, device: str = "cpu",
                       dtype: torch.dtype = torch.float32, scheduler: str | None = None,
                       variant: str | None = None, memory: Sequence[str] = (),
                       allow_pickle: bool = False) -> ModelAdapter:
        """Load a diffusers-format model directory (unet/, scheduler/, optional text_encoder/,
        tokenizer/, text_encoder_2/, tokenizer_2/, vae/).

        scheduler: a diffusers scheduler class name built from the model's scheduler config
        (default DDIMScheduler, the paper's sampler). variant: weight-file variant ("fp16").
        memory: MEMORY_OPTIONS to enable (for small GPUs). allow_pickle: also load pickled weights
        (.bin) where a part has no .safetensors; unpickling can run code, so off by default."""
        import diffusers
        import transformers

        path = Path(path)
        index_file = path / "model_index.json"
        if not index_file.exists():
            raise FileNotFoundError(f"{index_file} not found: not a diffusers model directory")
        index = json.loads(index_file.read_text())
        weights = {"torch_dtype": dtype, "variant": variant, "use_safetensors": None if allow_pickle else True}
        unet_cls = getattr(diffusers, index["unet"][1])
        # low_cpu_mem_usage=False: the default wants `accelerate` and warns on every load without it.
        unet = unet_cls.from_pretrained(path / "unet", low_cpu_mem_usage=False, **weights).to(device).eval()
        sampler = load_scheduler(path / "scheduler", scheduler)
        parts: dict = {}
        for name in ("text_encoder", "text_encoder_2"):
            if (index.get(name) or [None])[0] is None:
                continue
            encoder_cls = getattr(transformers, index[name][1])
            parts[name] = encoder_cls.from_pretrained(path / name, **weights).to(device).eval()
            tokenizer = name.replace("text_encoder", "tokenizer")
            parts[tokenizer] = getattr(transformers, index[tokenizer][1]).from_pretrained(path / tokenizer)
        if "text_encoder_2" in parts and "text_encoder" not in parts:
            raise ValueError(f"{path}: a pipeline with only text_encoder_2 (an SDXL refiner) is not supported; "
                             "use a base model")
        if (index.get("vae") or [None])[0] is not None:
            # Like diffusers' pipelines, decode in float32 when the VAE asks for it (SDXL's overflows in fp16).
            upcast = json.loads((path / "vae" / "config.json").read_text()).get("force_upcast", True)
            vae_dtype = torch.float32 if dtype == torch.float16 and upcast else dtype
            parts["vae"] = getattr(diffusers, index["vae"][1]).from_pretrained(
                path / "vae", torch_dtype=vae_dtype, variant=variant, low_cpu_mem_usage=False,
                use_safetensors=weights["use_safetensors"]).to(device).eval()
        adapter = cls(unet=unet, scheduler=sampler, model_id=model_id or str(path), device=device, dtype=dtype,
                      zero_empty_negative=bool(index.get("force_zeros_for_empty_prompt", False)), **parts)
        adapter.info.update({"pipeline": index.get("_class_name"), "unet": type(unet).__name__,
                             "variant": variant, "memory": adapter.enable_memory_options(memory)})
        return adapter

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Noise for each image from its own seed (CPU generator, so it is device-independent)."""
        channels = self.unet.config.in_channels
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        noise = [torch.randn((channels, *size), generator=torch.Generator().manual_seed(int(s)))
                 for s in seeds]
        return torch.stack(noise).to(self.device, self.dtype)

    def enable_memory_options(self, options: Sequence[str]) -> list[str]:
        """Turn on memory savers; returns those that apply to this model's parts."""
        unknown = sorted(set(options) - set(MEMORY_OPTIONS))
        if unknown:
            raise ValueError(f"unknown memory option {unknown[0]!r}; allowed: {', '.join(MEMORY_OPTIONS)}")
        applied = []
        if "attention_slicing" in options and hasattr(self.unet, "set_attention_slice"):
            self.unet.set_attention_slice("auto")
            applied.append("attention_slicing")
        if "vae_slicing" in options and self.vae is not None:
            self.vae.enable_slicing()
            applied.append("vae_slicing")
        if "vae_tiling" in options and self.vae is not None:
            self.vae.enable_tiling()
            applied.append("vae_tiling")
        return applied

    def _tokens(self, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
        return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(self.device)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context for cross-attention, pooled embedding or None). SDXL: both encoders'
        penultimate hidden states side by side, and encoder 2's projected pooled output."""
        if self.text_encoder_2 is None:
            return self.text_encoder(self._tokens(self.tokenizer, prompts))[0], None
        first = self.text_encoder(self._tokens(self.tokenizer, prompts), output_hidden_states=True)
        second = self.text_encoder_2(self._tokens(self.tokenizer_2, prompts), output_hidden_states=True)
        return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text_embeddings(prompts)[0]

    def _negative_embeddings(self, negative_prompt: str, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, pooled = self.text_embeddings([negative_prompt] * n)
        if self.zero_empty_negative and not negative_prompt:
            return torch.zeros_like(context), None if pooled is None else torch.zeros_like(pooled)
        return context, pooled

    def _size_conditions(self, pooled: torch.Tensor) -> dict:
        """SDXL's added conditions: pooled text embedding and (original size, crop, target size)."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        ids = torch.tensor([height * scale, width * scale, 0, 0, height * scale, width * scale], dtype=pooled.dtype)
        return {"text_embeds": pooled, "time_ids": ids.to(pooled.device).repeat(len(pooled), 1)}

    def _add_conditions(self, module, args, kwargs):
        """UNet pre-hook: give an SDXL UNet call the batch's added conditions (the last rows when
        the call carries only the conditional half, as the guidance methods' encoder passes do)."""
        if kwargs.get("added_cond_kwargs") is not None or self._added is None:
            return None
        n = (args[0] if args else kwargs["sample"]).shape[0]
        # (a lone sample's call carries a copy of it: see unet_output)
        kwargs["added_cond_kwargs"] = {k: v[-n:] if len(v) >= n else torch.cat([v] * n) for k, v in self._added.items()}
        return args, kwargs

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
        if x.shape[0] == 1 and (context is None or context.shape[0] == 1) and str(self.device) == "cpu":
            # A lone sample meets other CPU convolution kernels than any batch of two or more
            # (1e-6 apart), so it is computed beside a copy of itself; the copy comes first
            # because methods and recordings take a batch's last rows as its conditional ones.
            context = None if context is None else torch.cat([context] * 2)
            return self.unet_output(torch.cat([x, x]), t, context, guidance_scale)[-1:]
        if context is None:
            return self.unet(x, t).sample
        if context.shape[0] == 2 * x.shape[0]:
            both = self.unet(torch.cat([x] * 2), t, encoder_hidden_states=context).sample
            uncond, cond = both.chunk(2)
            return uncond + guidance_scale * (cond - uncond)
        return self.unet(x, t, encoder_hidden_states=context).sample

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
                 record_h: bool = False, eta: float | None = None) -> Generated:
        """Images [N, 3, H, W] in [0, 1] for the given per-image seeds (and prompts), under a
        method's hooks; optionally the h recorded at every step ([N, D] per step).

        eta: DDIM's stochasticity (0 the deterministic probability-flow sampler, its default; 1 as
        ancestral DDPM), for schedulers whose step takes it; the two can draw an attribute in
        different shares from the same model (benchmarks/research/sampler_marginals.py)."""
        from audit.methods.base import BatchContext, Method

        method = method or Method()
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        if eta:
            _keep_ddim_direction_real(scheduler, eta)
        x = self.initial_noise(seeds) * scheduler.init_noise_sigma
        generators = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]
        # Stochastic samplers draw each image's step noise from its own generator (PNDM takes none).
        step_parameters = inspect.signature(scheduler.step).parameters
        step_options = {"generator": generators} if "generator" in step_parameters else {}
        if eta is not None:
            if "eta" not in step_parameters:
                raise ValueError(f"eta={eta}: {type(scheduler).__name__} has no eta; use DDIMScheduler "
                                 "or leave eta unset")
            step_options["eta"] = eta
        context, self._added = None, None
        if self.conditional:
            if prompts is None or len(prompts) != len(seeds):
                raise ValueError("a text-conditioned model needs one prompt per seed")
            context, pooled = self.text_embeddings(prompts)
            if guidance_scale != 1.0:
                negative, negative_pooled = self._negative_embeddings(negative_prompt, len(seeds))
                context = torch.cat([negative, context])
                pooled = None if pooled is None else torch.cat([negative_pooled, pooled])
            if pooled is not None:
                self._added = self._size_conditions(pooled)
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
            x = scheduler.step(out, t, x, **step_options).prev_sample
        with torch.no_grad():
            if self.vae is not None:
                latents = x.to(self.vae.dtype) / self.vae.config.scaling_factor
                if getattr(self.vae.config, "shift_factor", None) is not None:
                    latents = latents + self.vae.config.shift_factor
                x = self.vae.decode(latents).sample
        finite = torch.isfinite(x.float()).flatten(1).all(1).cpu()
        if not finite.any() and len(seeds) > 1:
            raise SamplingDiverged(f"{self.model_id}: all {len(seeds)} images of a batch came out non-finite (NaN/inf) "
                                   f"sampling with {type(scheduler).__name__}, steps {steps}, eta {eta or 0:g}: the "
                                   "sampler diverged; change steps or eta (or the scheduler) in the model's entry")
        # A non-finite image is stored black (not NaN cast to uint8 with a warning) and reported,
        # so the runner marks it invalid with its reason instead of labelling a black square.
        images = torch.where(finite[:, None, None, None], (x.float().cpu() / 2 + 0.5).clamp(0, 1).nan_to_num(0.0),
                             torch.zeros(()))
        stats = method.end_batch(batch)
        if not finite.all():
            stats["nonfinite_seeds"] = [int(s) for s, ok in zip(seeds, finite.tolist(), strict=True) if not ok]
        return Generated(images=images, h=recorded if record_h else None, stats=stats, finite=finite)


MEMORY_OPTIONS = ("attention_slicing", "vae_slicing", "vae_tiling")


def load_scheduler(directory: Path, name: str | None = None):
    """A diffusers scheduler (default DDIMScheduler) built from a saved scheduler config."""
    import diffusers

    cls = getattr(diffusers, name or "DDIMScheduler", None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"unknown scheduler {name!r}: use a diffusers scheduler class name such as "
                         "DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler or DPMSolverMultistepScheduler")
    return cls.from_pretrained(directory)


@dataclass
class Generated:
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]; black where the sample came out non-finite
    h: list[torch.Tensor] | None  # per step [N, C*h*w] (the conditional half under CFG)
    stats: dict  # the method's, plus "nonfinite_seeds" when some images came out NaN/inf
    finite: torch.Tensor | None = None  # bool [N]: False where the sample came out NaN/inf


class SamplingDiverged(SuiteError):
    """Every image of a batch came out NaN/inf: a sampler setting (steps, eta, scheduler) that
    does not work for this model. A user-fixable setting, so one line and exit 2 like a suite error."""


def _keep_ddim_direction_real(scheduler, eta: float) -> None:
    """Work around a float32 cancellation in diffusers' DDIMScheduler.step at eta > 0.

    The step takes sqrt(1 - alpha_bar_prev - (eta * sqrt(variance))**2). Where alpha_bar_t is ~0,
    as at t=999 of a cosine schedule with trailing spacing (2.4e-9 on the zoo models), the exact
    value is ~1e-8 but float32 can round it to -6e-8: the square root is NaN and so is every image.
    The zoo's synthfaces-ddpm hit it at 5 steps with its default eta 1 (t 999 -> 799; diffusers'
    own DDIMPipeline gives the same all-NaN images). Here the variance of such a step is lowered by
    the few ulps that keep the root real (its true value is ~1e-4: the noise added is unchanged to
    float precision); every step that was finite before is left bit for bit as it was."""
    from diffusers import DDIMScheduler

    if not isinstance(scheduler, DDIMScheduler):
        return
    exact = scheduler._get_variance

    def variance(timestep, prev_timestep):
        var = exact(timestep, prev_timestep)
        a_prev = scheduler.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else scheduler.final_alpha_cumprod
        for _ in range(64):  # the same expression as the step's; a few ulps suffice
            if not (1 - a_prev - (eta * var ** 0.5) ** 2 < 0):
                break
            var = torch.nextafter(var, torch.zeros_like(var))
        return var

    scheduler._get_variance = variance


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
