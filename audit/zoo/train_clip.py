"""Train the zoo's CLIP (synthfaces-clip) on SynthFaces images and ground-truth captions, resumably.

Each caption mentions a random subset of its face's attributes in caption_for's varied
phrasing. Because captions come from ground truth we know which *other* captions in a batch are
also true of an image (the world has only 64 attribute combinations, so in a batch of 256 many
are); the contrastive loss spreads its targets over all of them instead of teaching the model
that a true caption does not match. Images get the labelers' augmentation (noise, blur, shifts,
colour jitter) so diffusion samples, which carry such artefacts, embed like ground truth.

The export is a plain CLIPModel + CLIPTokenizer + CLIP image-processor config, so
audit.labelers.clip_zeroshot.load_clip loads it like any local CLIP. Data is a pure function
of the step, so a run resumed from its checkpoint sees the batches it would have seen.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from audit.zoo.recipes import ClipRecipe
from audit.zoo.synthfaces import ATTRIBUTE_PHRASES, ATTRIBUTES, SUBJECTS, UNIFORM_WORLD, WORLDS, caption_for, generate
from audit.zoo.train_classifier import HELDOUT_N, HELDOUT_SEED, augment
from audit.zoo.train_diffusion import _atomic_torch_save, _stop_on_sigterm

CHECKPOINT = "checkpoint.pt"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp on the learnable temperature


def build(recipe: ClipRecipe, tokenizer_dir: Path):
    """A fresh (CLIPModel, tokenizer, image processor) for the recipe."""
    from transformers import CLIPConfig, CLIPModel

    from audit.labelers.clip_zeroshot import _image_processor_class
    from audit.zoo.tokenizer import load_or_save_tokenizer

    tokenizer = load_or_save_tokenizer(tokenizer_dir, max_length=recipe.max_length)
    text = {**recipe.text, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(recipe.data_seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=recipe.vision,
                                 projection_dim=recipe.projection_dim))
    # mean/std 0.5 maps 8-bit RGB to [-1, 1], the range the world's tensors (and training) use
    size = recipe.vision["image_size"]
    processor = _image_processor_class()(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return model, tokenizer, processor


def training_batch(recipe: ClipRecipe, step: int):
    """(images [N,3,32,32] in [-1,1], captions, attributes int [N,A], mentioned bool [N,A]);
    a pure function of (recipe, step), before augmentation."""
    seed = recipe.data_seed * 1_000_003 + step
    batch = generate(recipe.batch_size, WORLDS[recipe.world], seed=seed)
    rng = np.random.default_rng(seed + 7)
    attributes = np.stack([batch.attributes[a] for a in ATTRIBUTES], axis=1)
    mentioned = rng.random(attributes.shape) < rng.uniform(recipe.min_mention, 1.0, (len(batch), 1))
    names = list(ATTRIBUTES)
    captions = [caption_for({names[k]: int(attributes[i, k]) for k in np.flatnonzero(mentioned[i])}, rng, 1.0)
                for i in range(len(batch))]
    return batch.tensor(), captions, attributes, mentioned


def positives(attributes: np.ndarray, mentioned: np.ndarray) -> torch.Tensor:
    """bool [N_images, N_captions]: caption j is true of image i (every attribute it mentions matches)."""
    same = attributes[:, None, :] == attributes[None, :, :]  # [i, j, A]
    return torch.from_numpy((same | ~mentioned[None, :, :]).all(-1))


def contrastive_loss(logits_per_image: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy whose targets are uniform over every true pair (CLIP's loss when
    each image has exactly one true caption)."""
    target = positive.float()
    image_to_text = -(target / target.sum(1, keepdim=True) * logits_per_image.log_softmax(1)).sum(1).mean()
    text_to_image = -(target.T / target.T.sum(1, keepdim=True) * logits_per_image.T.log_softmax(1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


def lr_factor(step: int, recipe: ClipRecipe) -> float:
    """Linear warm-up, then cosine decay to zero at recipe.steps."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = min(1.0, (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * progress))


def train(recipe: ClipRecipe, workdir: Path, export_dir: Path, max_steps: int | None = None,
          checkpoint_every: int = 100, export_every: int = 1000, log=print, heldout: int = HELDOUT_N) -> int:
    """Train until recipe.steps (or max_steps more this call), exporting and measuring on the way;
    returns the step reached."""
    workdir.mkdir(parents=True, exist_ok=True)
    model, tokenizer, processor = build(recipe, workdir / "tokenizer")
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=recipe.lr)
    step, wall, running = 0, 0.0, None
    ckpt = workdir / CHECKPOINT
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, wall, running = int(state["step"]), float(state["wall"]), state.get("loss")
        log(f"resumed {recipe.name} at step {step}")
    end = recipe.steps if max_steps is None else min(recipe.steps, step + max_steps)
    stop = _stop_on_sigterm()
    generator = torch.Generator()
    model.train()
    while step < end:
        t0 = time.time()
        generator.manual_seed(recipe.data_seed * 7919 + step)
        images, captions, attributes, mentioned = training_batch(recipe, step)
        if recipe.augment:
            images = augment(images, generator)
        tokens = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, recipe)
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=images)
        loss = contrastive_loss(out.logits_per_image, positives(attributes, mentioned))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        step += 1
        wall += time.time() - t0
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"{recipe.name} step {step}/{recipe.steps} loss {running:.4f} "
                f"scale {model.logit_scale.exp().item():.1f} {wall / step:.2f}s/step "
                f"lr {optimizer.param_groups[0]['lr']:.2e}")
        if stop["requested"]:
            log(f"SIGTERM: saving {recipe.name} at step {step} and stopping")
            end = step
        if step % checkpoint_every == 0 or step == end:
            _atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "step": step, "wall": wall, "loss": running}, ckpt)
        if step % export_every == 0 or step == end:
            model.eval()
            export(recipe, model, tokenizer, processor, export_dir, step, wall, running, heldout, log)
            model.train()
    return step


def export(recipe, model, tokenizer, processor, export_dir: Path, step: int, wall: float, loss: float | None,
           heldout: int, log=print) -> dict:
    """Write the model (float32 safetensors, ~2 MB), tokenizer and image-processor config, then
    measure it through the zero-shot labeler on held-out ground truth (confusion.json)."""
    import transformers

    export_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(export_dir, safe_serialization=True)
    tokenizer.save_pretrained(export_dir)
    processor.save_pretrained(export_dir)
    measurements = measure(export_dir, n=heldout)
    (export_dir / "confusion.json").write_text(json.dumps(measurements, indent=2))
    info = {"recipe": recipe.name, "kind": "clip", "steps": step, "target_steps": recipe.steps,
            "train_seconds": round(wall, 1), "final_loss": loss, "data_seed": recipe.data_seed,
            "world": recipe.world, "torch": torch.__version__, "transformers": transformers.__version__,
            "description": recipe.description}
    (export_dir / "training.json").write_text(json.dumps(info, indent=2))
    log(f"exported {recipe.name} at step {step}: zero-shot accuracy " + ", ".join(
        f"{a} {v['accuracy']:.4f}" for a, v in measurements["attributes"].items())
        + ", retrieval " + ", ".join(f"{k} {v:.4f}" for k, v in measurements["retrieval"].items()))
    return measurements


def full_caption(classes: tuple[int, ...]) -> str:
    """The canonical caption naming all five attributes (first phrasing of each class)."""
    phrases = [ATTRIBUTE_PHRASES[a][ATTRIBUTES[a][c]][0] for a, c in zip(ATTRIBUTES, classes, strict=True)]
    return f"{SUBJECTS[0]} {', '.join(phrases[:-1])} and {phrases[-1]}"


def measure(directory: Path, n: int = HELDOUT_N, seed: int = HELDOUT_SEED, group: int = 100) -> dict:
    """Zero-shot confusion matrices per attribute and image-text retrieval accuracy on n held-out
    uniform-world images, through the synthfaces-clip labeler (the path audits use).

    retrieval image->text: the image's own attribute combination is the top-1 among the 64
    canonical full captions. text->image: in groups of `group` images, the image ranked first
    for each image's own caption (random phrasing, all attributes) has exactly its attributes."""
    from audit.zoo.labelers import SynthFacesClipLabeler

    labeler = SynthFacesClipLabeler(model_path=directory)
    batch = generate(n, UNIFORM_WORLD, seed=seed)
    images = batch.tensor() / 2 + 0.5
    features = labeler.encode_images(images)
    result = {"heldout": {"n": n, "world": "uniform", "seed": seed}, "attributes": {}, "retrieval": {}}
    scale = labeler.model.logit_scale.exp().float()
    for attribute, classes in ATTRIBUTES.items():
        truth = batch.attributes[attribute]
        pred = (scale * features @ labeler.class_embeddings[attribute].T).argmax(1).numpy()
        matrix = np.zeros((len(classes), len(classes)), dtype=int)
        np.add.at(matrix, (truth, pred), 1)
        result["attributes"][attribute] = {"classes": list(classes), "confusion": matrix.tolist(),
                                           "accuracy": float((truth == pred).mean())}
    attributes = np.stack([batch.attributes[a] for a in ATTRIBUTES], axis=1)
    combos = list(np.ndindex(*[len(c) for c in ATTRIBUTES.values()]))
    best = (features @ labeler.encode_texts([full_caption(c) for c in combos]).T).argmax(1).numpy()
    result["retrieval"]["image_to_text_64"] = float((np.asarray(combos)[best] == attributes).all(1).mean())
    rng = np.random.default_rng(seed + 1)
    names = list(ATTRIBUTES)
    captions = [caption_for({a: int(attributes[i, k]) for k, a in enumerate(names)}, rng, 1.0) for i in range(n)]
    texts = labeler.encode_texts(captions)
    hits = []
    for i in range(0, n - group + 1, group):
        top = (texts[i:i + group] @ features[i:i + group].T).argmax(1).numpy() + i
        hits.append((attributes[top] == attributes[i:i + group]).all(1))
    result["retrieval"][f"text_to_image_{group}"] = float(np.concatenate(hits).mean()) if hits else float("nan")
    return result
