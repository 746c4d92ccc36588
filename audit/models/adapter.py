"""ModelAdapter: owns the unrolled denoising loop of a diffusers model (denoiser + optional text
encoders, classifier-free guidance and VAE), the same for every family.

Families (audit/models/families/, one file each): unconditional UNet2DModel pipelines (DDPM/DDIM),
Stable Diffusion 1.x/2.x, SDXL, Stable Diffusion 3/3.5, Flux.1 and PixArt-Sigma. A family says how
its parts load, how prompts become the denoiser's conditioning, how the denoiser is called, where h
is and how latents become images; the loop, the method hooks and the h hook are written once here.

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
from audit.models.families import Family, family_for, family_of_parts
from audit.models.families.base import context_rows, last_rows, twice
from audit.models.hspace import POOL, HSpaceHook


@dataclass
class ModelAdapter:
    unet: torch.nn.Module | None  # a UNet family's denoiser; None for transformer families (see `denoiser`)
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
    family: Family | None = None  # chosen from the parts when not given (UNet2D, SD or SDXL)
    hspace_module: str | None = None  # module path of h in the denoiser (default: the family's middle block)
    hspace_pool: int = POOL  # transformer h: at most this many pooled cells per side (audit.models.hspace)
    _hook: HSpaceHook | None = field(default=None, repr=False)

    def __post_init__(self):
        self.family = (self.family or family_of_parts(self)).attach(self)
        if str(self.device) == "cpu":  # bit-identical images whatever the batch (see batch_invariant.py)
            self.info["batch_invariant_linear_layers"] = make_batch_invariant(*self.family.modules())

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network that predicts noise/velocity: a UNet or a family's transformer."""
        return self.family.denoiser

    @property
    def conditional(self) -> bool:
        return self.family.conditional

    @classmethod
    def from_directory(cls, path: str | Path, model_id: str | None = None, device: str = "cpu",
                       dtype: torch.dtype = torch.float32, scheduler: str | None = None,
                       variant: str | None = None, memory: Sequence[str] = (),
                       allow_pickle: bool = False, hspace: str | None = None,
                       hspace_pool: int | None = None) -> ModelAdapter:
        """Load a diffusers-format model directory; its family is chosen from model_index.json.

        scheduler: a diffusers scheduler class name built from the model's scheduler config
        (default: DDIMScheduler, the paper's sampler, for UNet families; the model's own scheduler
        for transformer families). variant: weight-file variant ("fp16"). memory: MEMORY_OPTIONS
        to enable (for small GPUs). allow_pickle: also load pickled weights (.bin) where a part has
        no .safetensors; unpickling can run code, so off by default. hspace: module path of h in
        the denoiser (e.g. "transformer_blocks.12"; default the family's middle block);
        hspace_pool: a transformer's h pooled to at most this many cells per side (default 8)."""
        path = Path(path)
        index_file = path / "model_index.json"
        if not index_file.exists():
            raise FileNotFoundError(f"{index_file} not found: not a diffusers model directory")
        index = json.loads(index_file.read_text())
        family = family_for(index, str(path))
        parts = family.load(path, index, device, dtype, variant, None if allow_pickle else True)
        name = scheduler or family.default_scheduler
        if name is not None or "scheduler" not in parts:
            parts["scheduler"] = load_scheduler(path / "scheduler", name)
        adapter = cls(model_id=model_id or str(path), device=device, dtype=dtype, hspace_module=hspace,
                      hspace_pool=hspace_pool or POOL, **parts)
        adapter.info.update({"pipeline": index.get("_class_name"), **adapter.family.info(),
                             "variant": variant, "memory": adapter.enable_memory_options(memory)})
        if adapter.unet is not None:
            adapter.info["unet"] = type(adapter.unet).__name__
        if hspace:
            adapter.info["hspace"] = hspace
        if hspace_pool:
            adapter.info["hspace_pool"] = hspace_pool
        return adapter

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Noise for each image from its own seed (CPU generator, so it is device-independent),
        in the denoiser's layout (Flux packs it into tokens)."""
        shape = self.family.noise_shape()
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return self.family.pack(torch.stack(noise)).to(self.device, self.dtype)

    def enable_memory_options(self, options: Sequence[str]) -> list[str]:
        """Turn on memory savers; returns those that apply to this model's parts."""
        unknown = sorted(set(options) - set(MEMORY_OPTIONS))
        if unknown:
            raise ValueError(f"unknown memory option {unknown[0]!r}; allowed: {', '.join(MEMORY_OPTIONS)}")
        applied = []
        if "attention_slicing" in options and hasattr(self.denoiser, "set_attention_slice"):
            self.denoiser.set_attention_slice("auto")
            applied.append("attention_slicing")
        if "vae_slicing" in options and self.vae is not None:
            self.vae.enable_slicing()
            applied.append("vae_slicing")
        if "vae_tiling" in options and self.vae is not None:
            self.vae.enable_tiling()
            applied.append("vae_tiling")
        return applied

    def encode_prompts(self, prompts: Sequence[str]):
        """The conditional context of `prompts` (a tensor for UNet families, a Conditioning for transformers)."""
        return self.family.encode_prompts(list(prompts))

    def new_scheduler(self, steps: int):
        """A fresh copy of the scheduler with its timesteps set as the family's pipeline sets them."""
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        self.family.set_timesteps(scheduler, steps)
        return scheduler

    def timesteps(self, steps: int) -> list:
        return [_step_value(t) for t in self.new_scheduler(steps).timesteps]

    def hspace(self) -> HSpaceHook:
        """The h-space hook (attached once, on first use)."""
        if self._hook is None:
            self._hook = HSpaceHook(self.denoiser, self.hspace_module or self.family.hspace_default(),
                                    stream=self.family.hspace_stream, grid=self.family.token_grid(),
                                    pool=self.hspace_pool)
        return self._hook

    @staticmethod
    def model_input(scheduler, x: torch.Tensor, t) -> torch.Tensor:
        """x as the denoiser takes it at t (flow-matching schedulers have no input scaling)."""
        scale = getattr(scheduler, "scale_model_input", None)
        return x if scale is None else scale(x, t)

    def encode_h(self, x: torch.Tensor, t, context) -> torch.Tensor:
        """h of x at t through the denoiser up to the h block only (differentiable); under
        classifier-free guidance, with the conditional rows of the context."""
        context = last_rows(context, len(x))
        return self.hspace().run_until(lambda: self.family.call(x, t, context))

    def unet_output(self, x: torch.Tensor, t, context, guidance_scale: float) -> torch.Tensor:
        """The denoiser's prediction at (x, t), with classifier-free guidance when a negative
        context is stacked in front of the positive one."""
        return self.unet_outputs(x, t, context, guidance_scale)[0]

    def unet_outputs(self, x: torch.Tensor, t, context, guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(the prediction unet_output gives, the text-conditional prediction it was made from):
        a method that compares another prompt's prediction with the prompt's own reads the latter
        here rather than evaluating the UNet once more. Without classifier-free guidance both are
        the same tensor."""
        rows = context_rows(context)
        if x.shape[0] == 1 and rows in (None, 1) and str(self.device) == "cpu":
            # A lone sample meets other CPU convolution kernels than any batch of two or more
            # (1e-6 apart), so it is computed beside a copy of itself; the copy comes first
            # because methods and recordings take a batch's last rows as its conditional ones.
            guided, conditional = self.unet_outputs(torch.cat([x, x]), t, twice(context), guidance_scale)
            return guided[-1:], conditional[-1:]
        if rows == 2 * x.shape[0]:
            uncond, cond = self.family.call(torch.cat([x] * 2), t, context).chunk(2)
            return uncond + guidance_scale * (cond - uncond), cond
        output = self.family.call(x, t, context)
        return output, output

    denoise = unet_output

    def predict_x0(self, scheduler, x: torch.Tensor, t, output: torch.Tensor) -> torch.Tensor:
        """x0 implied by the model output under the scheduler's parametrisation."""
        return self.family.predict_x0(scheduler, x, t, output)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (unclamped) from x; differentiable."""
        return self.family.decode(x)

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
        scheduler = self.new_scheduler(steps)
        if eta:
            _keep_ddim_direction_real(scheduler, eta)
        x = self.initial_noise(seeds) * getattr(scheduler, "init_noise_sigma", 1.0)
        generators = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]
        # Stochastic samplers draw each image's step noise from its own generator (PNDM takes none).
        step_parameters = inspect.signature(scheduler.step).parameters
        step_options = {"generator": generators} if "generator" in step_parameters else {}
        if eta is not None:
            if "eta" not in step_parameters:
                raise ValueError(f"eta={eta}: {type(scheduler).__name__} has no eta; use DDIMScheduler "
                                 "or leave eta unset")
            step_options["eta"] = eta
        context = None
        if self.conditional:
            if prompts is None or len(prompts) != len(seeds):
                raise ValueError("a text-conditioned model needs one prompt per seed")
            context = self.family.condition(list(prompts), negative_prompt, guidance_scale)
        batch = BatchContext(adapter=self, scheduler=scheduler, seeds=list(seeds), prompts=prompts,
                             context=context, guidance_scale=guidance_scale, steps=steps)
        method.start_batch(batch)
        hook = self.hspace() if (record_h or method.edits_h) else None
        recorded: list[torch.Tensor] = []
        for i, t in enumerate(scheduler.timesteps):
            batch.step_index, batch.t = i, _step_value(t)
            x = method.on_x(x, batch)
            if hook is not None:
                hook.edit = lambda h: _edit_cond_half(h, method, batch, len(seeds))
                hook.record, hook.recorded = record_h, []
            try:
                with torch.no_grad():
                    out, batch.conditional = self.unet_outputs(self.model_input(scheduler, x, t), t, context,
                                                               guidance_scale)
            finally:
                if hook is not None:
                    hook.edit, hook.record = None, False
            if record_h:
                recorded.append(hook.recorded[-1][-len(seeds):].flatten(1))
            out = method.on_output(out, x, batch)
            x = scheduler.step(out, t, x, **step_options).prev_sample
        with torch.no_grad():
            if len(x) == 1 and str(self.device) == "cpu":  # as in unet_output: a lone sample meets other kernels
                x = self.family.decode(torch.cat([x, x]))[-1:]
            else:
                x = self.family.decode(x)
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


def _step_value(t):
    """A scheduler timestep as a Python number: an int where it is whole (DDIM's, and the
    timesteps probes are keyed by), else the float (flow matching's sigma * 1000)."""
    value = t.item() if torch.is_tensor(t) else t
    return int(value) if float(value).is_integer() else float(value)


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
    as at t=999 of a cosine (squaredcos_cap_v2) schedule with trailing spacing, where alpha_bar is
    2.4e-9, the exact value is ~1e-8 but float32 can round it to -6e-8: the square root is NaN and
    so is every image. Such a model sampled at 5 steps with eta 1 (t 999 -> 799) came out all NaN,
    and diffusers' own DDIMPipeline gives the same all-NaN images. Here the variance of such a step is lowered by
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
