"""Training recipes of the zoo: everything `diffaudit zoo train NAME` needs to reproduce a model.

Recipe choices for the diffusion models come from the prototype findings in DESIGN.md:
epsilon prediction lost the global colour at this size, v-prediction with a cosine schedule
and trailing timestep spacing reproduced it; the UNet downsamples to 4x4 and has attention in
its middle block so that h-space (the mid-block output) is semantic enough to guide.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiffusionRecipe:
    name: str
    conditional: bool
    unet: dict
    scheduler: dict
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 300
    ema_decay: float = 0.999
    world: str = "biased"
    data_seed: int = 1
    # Zoo CLIP whose text tower, frozen, conditions the UNet, as Stable Diffusion conditions on a
    # frozen CLIP text encoder. An encoder trained jointly with the UNet (its first 3,594 steps) mapped
    # the eyeglasses and smile phrases to almost the same embedding (distance ~1 vs ~25 for
    # skin or hair), so the UNet never learnt them: the prompts were ignored at step 3,401.
    text_encoder_from: str | None = None
    caption_dropout: float = 0.1  # empty caption, for classifier-free guidance
    mention_prob: float = 0.5  # chance that a caption mentions each attribute
    # Chance that a training sample's skip connections into the `skip_dropout_levels` deepest
    # up-blocks are zeroed. Without it our small UNets learnt to bypass h (zeroing h at every
    # step moved images by 0.014), so h-space guidance had nothing to steer; with it the
    # decoder must read the global content from the middle block, as in large UNets.
    skip_dropout: float = 0.0
    skip_dropout_levels: int = 2
    # Timesteps are drawn uniformly, except that this share of each batch is drawn from
    # `timestep_focus` [low, high): a fine-tune can spend its steps on the noise levels where
    # deterministic sampling decides the layout (the 12,000-step DDPM's ODE drew 0.06 too much
    # short hair although its denoiser's mean matched the data; stochastic sampling drew 0.03).
    # Tried (benchmarks/research/zoo_finetune.py): 1,000 steps from that export with half of each
    # batch in [600, 1000) left the gap at 0.067; not kept.
    timestep_focus: tuple[int, int] | None = None
    timestep_focus_share: float = 0.5
    # DDIM eta a suite samples this model with unless its model entry sets one (ModelSpec.eta).
    sampling_eta: float | None = None
    description: str = ""


@dataclass(frozen=True)
class ClassifierRecipe:
    """A SynthFaces CNN: attribute labeler, or the FID feature extractor."""

    name: str
    kind: str  # "labeler" | "features"
    channels: tuple[int, ...]
    kernel_size: int
    feature_dim: int
    steps: int
    batch_size: int = 128
    lr: float = 2e-3
    world: str = "uniform"
    data_seed: int = 11
    augment: bool = True
    description: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ClipRecipe:
    """A small transformers CLIPModel trained contrastively on SynthFaces images and captions
    built from their ground-truth attributes (see audit/zoo/train_clip.py)."""

    name: str
    vision: dict
    text: dict
    projection_dim: int
    steps: int
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 150
    weight_decay: float = 0.05
    world: str = "uniform"
    data_seed: int = 53
    augment: bool = True
    max_length: int = 32  # tokens; the longest caption (all five attributes) is 27
    min_mention: float = 0.15  # each caption mentions each attribute with p ~ U(min_mention, 1)
    kind: str = "clip"
    description: str = ""


SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "clip_sample": True,
    "set_alpha_to_one": True,
}

DDPM_UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64, 128, 128),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "attention_head_dim": 32,
    "norm_num_groups": 16,
}

T2I_UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64, 128, 128),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "norm_num_groups": 16,
    "cross_attention_dim": 64,  # the hidden size of synthfaces-clip's text tower (CLIP_TEXT)
}

CLIP_VISION = {
    "image_size": 32,
    "patch_size": 4,
    "hidden_size": 96,
    "intermediate_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
}

CLIP_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 32,
}

RECIPES: dict[str, DiffusionRecipe | ClassifierRecipe | ClipRecipe] = {
    "synthfaces-ddpm": DiffusionRecipe(
        # Longer than the first 8,000 steps: at 8,000 only 89.7% of samples were labelled
        # confidently on all five attributes at once (ground truth: 99.7%). 12,000 steps, the last
        # 2,000 with skip dropout on three levels as synthfaces-t2i: with two, substituting a
        # dark-skinned sample's h turned 3 of 16 light-skinned samples dark (t2i: 1 of 16 with two
        # levels, 10 of 16 with three; benchmarks/research/hspace_swap.py), and h guidance toward
        # 0.1/0.9 left ~17% light (the guidance bar asks FD <= 0.07). The zoo serves step 12,000.
        name="synthfaces-ddpm", conditional=False, unet=DDPM_UNET, scheduler=SCHEDULER,
        steps=12_000, skip_dropout=0.5, skip_dropout_levels=3,
        # Sampled with stochastic DDIM: with the deterministic sampler (eta 0) these weights draw
        # 6.4 points too much short hair (eta 0.5: 5.7; eta 1: 3.2, and every zoo bar met:
        # benchmarks/results/zoo_check_ddpm_step12000_eta*.json).
        sampling_eta=1.0,
        description="Unconditional UNet2DModel (4.3M params, v-prediction, DDIM; sampled with "
                    "eta 1) trained on the biased SynthFaces world.",
    ),
    "synthfaces-t2i": DiffusionRecipe(
        name="synthfaces-t2i", conditional=True, unet=T2I_UNET, scheduler=SCHEDULER,
        # 8,000 steps like synthfaces-ddpm (12,000 were planned first: at 1.5 s/step on 2 cores
        # the longer schedule took too long before probes could be trained),
        # then to 11,000 with skip dropout on three levels: with two, substituting a dark-skinned
        # sample's h at every step turned 1 of 16 light-skinned samples dark (3 of 16 on
        # synthfaces-ddpm; benchmarks/research/hspace_swap.py), and h guidance balanced skin tone
        # only part of the way (FD 0.143 at step 8,000 against 0.016 at 11,000; bar 0.05).
        text_encoder_from="synthfaces-clip", steps=11_000, data_seed=2, skip_dropout=0.5,
        skip_dropout_levels=3,
        description="Text-conditioned UNet2DConditionModel conditioned on the frozen text tower "
                    "of synthfaces-clip, trained on captions that mention a random subset of the "
                    "attributes.",
    ),
    "synthfaces-eval": ClassifierRecipe(
        name="synthfaces-eval", kind="labeler", channels=(32, 64, 128), kernel_size=3,
        feature_dim=128, steps=800, data_seed=11,
        description="Evaluation labeler: 3-stage CNN (3x3 convs, batch norm), trained on the "
                    "uniform world with augmentation.",
    ),
    "synthfaces-pseudo": ClassifierRecipe(
        name="synthfaces-pseudo", kind="labeler", channels=(24, 48, 96, 96), kernel_size=5,
        feature_dim=64, steps=800, data_seed=23,
        description="Pseudo-labeler for probe training: 4-stage CNN (5x5 convs), a different "
                    "architecture and data seed from synthfaces-eval.",
    ),
    "synthfaces-features": ClassifierRecipe(
        name="synthfaces-features", kind="features", channels=(32, 64, 128), kernel_size=3,
        feature_dim=64, steps=1200, data_seed=37, world="biased",
        description="FID[synthfaces] extractor: a CNN trained to predict every attribute and "
                    "regress every nuisance render parameter (position, scale, skin shade, "
                    "background and shirt colour); its 64-d penultimate layer is the feature.",
    ),
    "synthfaces-clip": ClipRecipe(
        name="synthfaces-clip", vision=CLIP_VISION, text=CLIP_TEXT, projection_dim=64, steps=2500,
        description="CLIP (transformers CLIPModel: 4-layer ViT on 4x4 patches, 2-layer text "
                    "tower) trained contrastively on the uniform world with ground-truth "
                    "captions; backs CLIP score and the zero-shot labeler synthfaces-clip.",
    ),
}
