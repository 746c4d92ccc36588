"""Train a zoo diffusion model (unconditional or text-conditioned) on SynthFaces, resumably.

Data is generated on the fly from a seed per step, so a run resumed from its last checkpoint
sees exactly the batches it would have seen uninterrupted. Checkpoints (model, EMA, optimizer)
go to a work directory; `export` writes the EMA weights in diffusers' directory format.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from audit.zoo.recipes import DiffusionRecipe
from audit.zoo.synthfaces import WORLDS, caption_for, generate

CHECKPOINT = "checkpoint.pt"


class TrainingStateError(ValueError):
    """A checkpoint, export or text encoder that this recipe cannot continue from: the user's to
    fix (the message says how), not a bug."""


def build_models(recipe: DiffusionRecipe):
    """Fresh (unet, text_encoder, tokenizer, scheduler) for a recipe; text parts are None when
    the recipe is unconditional. The text encoder is the frozen text tower of a zoo CLIP."""
    from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel

    torch.manual_seed(0)
    scheduler = DDIMScheduler(**recipe.scheduler)
    if not recipe.conditional:
        return UNet2DModel(**recipe.unet), None, None, scheduler
    text_encoder, tokenizer = frozen_text_encoder(recipe.text_encoder_from)
    return UNet2DConditionModel(**recipe.unet), text_encoder, tokenizer, scheduler


def frozen_text_encoder(clip_name: str):
    """(CLIPTextModel, tokenizer) of a zoo CLIP's text tower, in eval mode with no gradients."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    from audit.zoo import is_trained, zoo_path

    if not is_trained(clip_name):
        raise TrainingStateError(f"the text encoder comes from {clip_name}, which is not trained; "
                                 f"run `diffaudit zoo train {clip_name}` first")
    clip = CLIPModel.from_pretrained(zoo_path(clip_name), torch_dtype=torch.float32)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval().requires_grad_(False), CLIPTokenizer.from_pretrained(zoo_path(clip_name))


@torch.no_grad()
def encode_text(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


class SkipDropout:
    """Zero, per training sample with probability p, the skip connections entering the deepest
    up-blocks, so the decoder learns to take global content from h (see DiffusionRecipe)."""

    def __init__(self, unet: torch.nn.Module, p: float, levels: int, generator: torch.Generator):
        self.p, self.generator = p, generator
        self.handles = [block.register_forward_pre_hook(self._hook, with_kwargs=True)
                        for block in list(unet.up_blocks)[:levels]] if p > 0 else []

    def _drop(self, skips: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        keep = (torch.rand(skips[0].shape[0], generator=self.generator) >= self.p).float()
        keep = keep.view(-1, 1, 1, 1).to(skips[0])
        return tuple(s * keep for s in skips)

    def _hook(self, module, args, kwargs):
        if not module.training:
            return None
        if "res_hidden_states_tuple" in kwargs:  # UNet2DConditionModel passes keywords
            kwargs["res_hidden_states_tuple"] = self._drop(kwargs["res_hidden_states_tuple"])
        else:  # UNet2DModel: (hidden_states, res_hidden_states_tuple, temb, ...)
            args = (args[0], self._drop(args[1]), *args[2:])
        return args, kwargs


def lr_factor(step: int, recipe: DiffusionRecipe) -> float:
    """Linear warm-up, then cosine decay to 5% at recipe.steps."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = min(1.0, (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def training_batch(recipe: DiffusionRecipe, step: int):
    """The step's images and captions; a pure function of (recipe, step)."""
    seed = recipe.data_seed * 1_000_003 + step
    batch = generate(recipe.batch_size, WORLDS[recipe.world], seed=seed)
    captions = None
    if recipe.conditional:
        rng = np.random.default_rng(seed + 7)
        captions = []
        for i in range(len(batch)):
            if rng.random() < recipe.caption_dropout:
                captions.append("")
            else:
                attrs = {k: int(v[i]) for k, v in batch.attributes.items()}
                captions.append(caption_for(attrs, rng, recipe.mention_prob))
    return batch.tensor(), captions


def training_timesteps(recipe: DiffusionRecipe, n: int, num_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """The step's timesteps: uniform, with recipe.timestep_focus_share of them (in expectation)
    drawn from recipe.timestep_focus instead. Without a focus the draws are exactly those of
    every run before the option existed, so old checkpoints resume on the same batches."""
    t = torch.randint(0, num_timesteps, (n,), generator=generator)
    if recipe.timestep_focus is None:
        return t
    low, high = recipe.timestep_focus
    focused = torch.randint(low, high, (n,), generator=generator)
    return torch.where(torch.rand(n, generator=generator) < recipe.timestep_focus_share, focused, t)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(recipe: DiffusionRecipe, workdir: Path, export_dir: Path, max_steps: int | None = None,
          checkpoint_every: int = 250, export_every: int = 1000, log=print,
          warm_start_dir: Path | None = None, device: str = "cpu") -> int:
    """Train until recipe.steps (or max_steps this call); returns the step reached.

    Without a checkpoint in workdir, training warm-starts from exported weights: export_dir's,
    else warm_start_dir's (e.g. the zoo's committed weights while exporting elsewhere).
    device: where the networks train; data, noise and timesteps are drawn on the CPU from the
    same seeds whatever the device, so a run can move between CPU and GPU sessions."""
    from diffusers.training_utils import EMAModel

    workdir.mkdir(parents=True, exist_ok=True)
    source = next((d for d in (export_dir, warm_start_dir) if d and (d / "training.json").exists()), None)
    unet, text_encoder, tokenizer, scheduler = build_models(recipe)
    unet.to(device)
    if text_encoder is not None:
        text_encoder.to(device)
    params = list(unet.parameters())  # the text encoder is frozen
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01)
    ema = EMAModel(params, decay=recipe.ema_decay, use_ema_warmup=True, power=0.75)
    step, wall, rewarm_from = 0, 0.0, None
    ckpt = workdir / CHECKPOINT
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location=device)
        try:
            unet.load_state_dict(state["unet"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as error:
            raise TrainingStateError(f"{ckpt} was written by another version of the {recipe.name} recipe "
                                     f"({str(error).splitlines()[0]}); delete it to warm-start from "
                                     f"the exported weights instead") from None
        ema.load_state_dict(state["ema"])
        step, wall = int(state["step"]), float(state["wall"])
        log(f"resumed {recipe.name} at step {step}")
    elif source is not None:
        step, wall, fresh = warm_start(recipe, unet, ema, source)
        rewarm_from = step
        log(f"warm-started {recipe.name} from the weights exported at step {step} in {source}")
        if fresh:
            log(f"the export was conditioned on another text encoder: {len(fresh)} cross-attention "
                "input projections start afresh (value projections at zero)")

    end = recipe.steps if max_steps is None else min(recipe.steps, step + max_steps)
    stop = _stop_on_sigterm()
    alphas = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(recipe.data_seed)
    running, recent, recent_steps = None, 0.0, 0  # wall time and steps since the last log line
    SkipDropout(unet, recipe.skip_dropout, recipe.skip_dropout_levels, generator)  # reseeded every step
    unet.train()
    while step < end:
        t0 = time.time()
        generator.manual_seed(recipe.data_seed * 7919 + step)
        x0, captions = training_batch(recipe, step)
        noise = torch.randn(x0.shape, generator=generator)
        t = training_timesteps(recipe, len(x0), len(alphas), generator)
        x0, noise, t = x0.to(device), noise.to(device), t.to(device)
        x_t = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        factor = lr_factor(step, recipe)
        if rewarm_from is not None:  # a fresh optimizer's first Adam steps are full-size: ramp up again
            factor *= min(1.0, (step - rewarm_from + 1) / recipe.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * factor
        if recipe.conditional:
            pred = unet(x_t, t, encoder_hidden_states=encode_text(tokenizer, text_encoder, captions)).sample
        else:
            pred = unet(x_t, t).sample
        loss = F.mse_loss(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        step += 1
        elapsed = time.time() - t0
        wall, recent, recent_steps = wall + elapsed, recent + elapsed, recent_steps + 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:  # the rate since the last line, not the mean of every run so far
            rate, recent, recent_steps = recent / recent_steps, 0.0, 0
            log(f"{recipe.name} step {step}/{recipe.steps} loss {running:.4f} {rate:.2f}s/step "
                f"lr {optimizer.param_groups[0]['lr']:.2e} eta {(end - step) * rate / 3600:.1f} h")
        if stop["requested"]:
            log(f"SIGTERM: saving {recipe.name} at step {step} and stopping")
            end = step
        if step % checkpoint_every == 0 or step == end:
            state = {"unet": unet.state_dict(), "optimizer": optimizer.state_dict(),
                     "ema": ema.state_dict(), "step": step, "wall": wall}
            _atomic_torch_save(state, ckpt)
        if step % export_every == 0 or step == end:
            export(recipe, unet, text_encoder, tokenizer, scheduler, ema, params, export_dir,
                   step, wall, running)
            log(f"exported {recipe.name} at step {step} to {export_dir}")
    info = export_dir / "training.json"
    if not info.exists() or json.loads(info.read_text())["steps"] != step:  # a finished checkpoint: export it
        export(recipe, unet, text_encoder, tokenizer, scheduler, ema, params, export_dir, step, wall, running)
        log(f"exported {recipe.name} at step {step} to {export_dir}")
    return step


def _stop_on_sigterm() -> dict:
    """SIGTERM asks the loop to checkpoint and export at the end of the current step."""
    import signal

    flag = {"requested": False}

    def handler(signum, frame):
        flag["requested"] = True

    with contextlib.suppress(ValueError):  # not the main thread: no graceful stop there
        signal.signal(signal.SIGTERM, handler)
    return flag


def warm_start(recipe, unet, ema, export_dir: Path) -> tuple[int, float, list[str]]:
    """Continue from committed (EMA) weights when the work checkpoint is gone, e.g. in a new
    session: model and EMA both start from the exported weights; the optimizer starts fresh.

    An export conditioned on another text encoder (its training.json names another, or none:
    the jointly trained encoder of sessions 1-6) keeps everything but the cross-attention
    key/value projections, which read the encoder: they start afresh, values at zero so that
    cross-attention first adds nothing rather than noise. Returns (step, seconds, the names of
    those projections)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    info = json.loads((export_dir / "training.json").read_text())
    cls = UNet2DConditionModel if recipe.conditional else UNet2DModel
    exported = cls.from_pretrained(export_dir / "unet", torch_dtype=torch.float32).state_dict()
    current = unet.state_dict()
    fresh = []
    if recipe.conditional and info.get("text_encoder_from") != recipe.text_encoder_from:
        fresh = [k for k in current if ".attn2.to_k." in k or ".attn2.to_v." in k]
    mismatched = [k for k, v in exported.items()
                  if k not in fresh and (k not in current or current[k].shape != v.shape)]
    if mismatched:
        raise TrainingStateError(f"{export_dir / 'unet'} has another shape than the {recipe.name} recipe's "
                                 f"UNet ({mismatched[0]}); export to a new --export-dir to train from scratch")
    for key in fresh:
        exported[key] = torch.zeros_like(current[key]) if ".attn2.to_v." in key else current[key]
    unet.load_state_dict(exported)
    ema.shadow_params = [p.detach().clone() for p in unet.parameters()]
    ema.optimization_step = int(info["steps"])
    return int(info["steps"]), float(info.get("train_seconds", 0.0)), fresh


def export(recipe, unet, text_encoder, tokenizer, scheduler, ema, params, export_dir: Path,
           step: int, wall: float, loss: float | None) -> None:
    """Write the EMA weights (UNet in float16 safetensors) in diffusers' directory layout."""
    import copy

    import diffusers
    import transformers

    export_dir.mkdir(parents=True, exist_ok=True)
    ema.store(params)
    ema.copy_to(params)
    try:
        copy.deepcopy(unet).to(torch.float16).save_pretrained(export_dir / "unet", safe_serialization=True)
        components = {"unet": ["diffusers", type(unet).__name__],
                      "scheduler": ["diffusers", type(scheduler).__name__]}
        if text_encoder is not None:
            # float32: the frozen encoder exactly as training saw it (88k parameters)
            text_encoder.save_pretrained(export_dir / "text_encoder", safe_serialization=True)
            tokenizer.save_pretrained(export_dir / "tokenizer")
            components["text_encoder"] = ["transformers", "CLIPTextModel"]
            components["tokenizer"] = ["transformers", "CLIPTokenizer"]
    finally:
        ema.restore(params)
    scheduler.save_pretrained(export_dir / "scheduler")
    index = {"_class_name": "DDIMPipeline" if text_encoder is None else "SynthFacesTextToImage",
             "_diffusers_version": diffusers.__version__, **components}
    (export_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    info = {"recipe": recipe.name, "steps": step, "target_steps": recipe.steps,
            **({"text_encoder_from": recipe.text_encoder_from} if recipe.conditional else {}),
            **({"timestep_focus": list(recipe.timestep_focus), "timestep_focus_share": recipe.timestep_focus_share}
               if recipe.timestep_focus is not None else {}),
            "train_seconds": round(wall, 1), "final_loss": loss, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "description": recipe.description}
    info_file = export_dir / "training.json"
    previous = json.loads(info_file.read_text()) if info_file.exists() else {}
    if "history" in previous:  # how earlier runs got here
        info["history"] = previous["history"]
    info_file.write_text(json.dumps(info, indent=2))
