"""SynthFaces: procedural 32x32 cartoon faces with exact ground-truth attributes.

The world is the project's offline stand-in for a face dataset: every image comes with the
attributes it was drawn with, so labelers, probes and audits on it can be checked exactly.
Rendering is vectorised numpy over a whole batch with anti-aliased (signed-distance) edges;
every attribute is drawn large enough to be legible at 32 px.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 32

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "skin_tone": ("light", "dark"),
    "hair_length": ("short", "long"),
    "eyeglasses": ("no", "yes"),
    "smile": ("no", "yes"),
    "hair_color": ("black", "brown", "blond", "gray"),
}

# Colour ranges (RGB in [0, 1]); a per-image shade interpolates between the two ends.
SKIN_RANGES = {
    "light": ((0.98, 0.84, 0.74), (0.86, 0.66, 0.52)),
    "dark": ((0.50, 0.33, 0.22), (0.30, 0.19, 0.12)),
}
HAIR_COLORS = {
    "black": (0.09, 0.08, 0.08),
    "brown": (0.42, 0.25, 0.12),
    "blond": (0.93, 0.80, 0.42),
    "gray": (0.68, 0.68, 0.70),
}
FRAME_COLOR = (0.10, 0.10, 0.14)
LENS_COLOR = (0.70, 0.88, 0.98)
MOUTH_COLOR = (0.55, 0.10, 0.12)
TEETH_COLOR = (0.97, 0.97, 0.95)
EYE_COLOR = (0.08, 0.06, 0.06)


@dataclass(frozen=True)
class Correlation:
    """P(attribute | given == given_class) = probs; other classes of `given` are adjusted so
    the attribute's marginal stays as configured."""

    attribute: str
    given: str
    given_class: str
    probs: tuple[float, ...]


@dataclass(frozen=True)
class World:
    """Attribute marginals (class order as in ATTRIBUTES) and optional correlations."""

    marginals: dict[str, tuple[float, ...]]
    correlations: tuple[Correlation, ...] = field(default=())

    def __post_init__(self) -> None:
        for name, classes in ATTRIBUTES.items():
            probs = self.marginals.get(name)
            if probs is None or len(probs) != len(classes):
                raise ValueError(f"World.marginals[{name!r}] must give {len(classes)} "
                                 f"probabilities for {list(classes)}")
            if abs(sum(probs) - 1) > 1e-6 or min(probs) < 0:
                raise ValueError(f"World.marginals[{name!r}] must be >= 0 and sum to 1, got {probs}")
        for c in self.correlations:
            self.conditional_table(c)  # validates

    def conditional_table(self, c: Correlation) -> np.ndarray:
        """[K_given, K_attribute] table of P(attribute | given) that keeps both marginals."""
        if c.attribute not in ATTRIBUTES or c.given not in ATTRIBUTES:
            raise ValueError(f"unknown attribute in correlation {c}; allowed: {list(ATTRIBUTES)}")
        given_classes = ATTRIBUTES[c.given]
        if c.given_class not in given_classes:
            raise ValueError(f"{c.given_class!r} is not a class of {c.given}: {list(given_classes)}")
        p_given = np.asarray(self.marginals[c.given], dtype=float)
        p_attr = np.asarray(self.marginals[c.attribute], dtype=float)
        special = given_classes.index(c.given_class)
        q = np.asarray(c.probs, dtype=float)
        rest = (p_attr - p_given[special] * q) / (1 - p_given[special])
        if rest.min() < -1e-9:
            raise ValueError(f"correlation {c} is incompatible with the marginal of {c.attribute}")
        table = np.tile(np.clip(rest, 0, 1), (len(given_classes), 1))
        table[special] = q
        return table / table.sum(axis=1, keepdims=True)

    def sample_attributes(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        conditioned = {c.attribute: c for c in self.correlations}
        out: dict[str, np.ndarray] = {}
        for name, classes in ATTRIBUTES.items():
            if name not in conditioned:
                out[name] = rng.choice(len(classes), size=n, p=self.marginals[name])
        for name, c in conditioned.items():
            table = self.conditional_table(c)[out[c.given]]  # [n, K]
            u = rng.random(n)[:, None]
            out[name] = (u > np.cumsum(table, axis=1)).sum(axis=1).clip(max=table.shape[1] - 1)
        return {name: out[name].astype(np.int64) for name in ATTRIBUTES}


BIASED_WORLD = World(
    marginals={
        "skin_tone": (0.85, 0.15),
        "hair_length": (0.30, 0.70),
        "eyeglasses": (0.80, 0.20),
        "smile": (0.50, 0.50),
        "hair_color": (0.40, 0.30, 0.20, 0.10),
    },
    correlations=(Correlation("eyeglasses", "hair_color", "gray", (0.50, 0.50)),),
)
UNIFORM_WORLD = World(marginals={k: tuple([1 / len(v)] * len(v)) for k, v in ATTRIBUTES.items()})
WORLDS = {"biased": BIASED_WORLD, "uniform": UNIFORM_WORLD}


@dataclass
class FaceBatch:
    images: np.ndarray  # uint8 [N, 32, 32, 3]
    attributes: dict[str, np.ndarray]  # name -> int64 [N] class index
    params: np.ndarray  # float32 [N, P] nuisance render parameters (for feature learning)

    def __len__(self) -> int:
        return len(self.images)

    def tensor(self):
        """Images as a float tensor [N, 3, 32, 32] in [-1, 1] (the diffusion models' range)."""
        import torch

        return torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


PARAM_NAMES = ("dx", "dy", "scale", "skin_shade", "bg_r", "bg_g", "bg_b",
               "shirt_r", "shirt_g", "shirt_b", "hair_jitter")


def _soft(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - distance, 0.0, 1.0)


def _ellipse(x, y, cx, cy, rx, ry) -> np.ndarray:
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return _soft((r - 1.0) * np.minimum(rx, ry))


def _paint(canvas: np.ndarray, mask: np.ndarray, color) -> None:
    color = np.asarray(color, dtype=np.float32)
    # One colour for all images [3], or one per image [N, 3].
    color = color[None, None, None, :] if color.ndim == 1 else color[:, None, None, :]
    canvas += mask[..., None] * (color - canvas)


def render(attributes: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw faces for the given attribute indices; returns (uint8 images, nuisance params)."""
    n = len(attributes["skin_tone"])
    f32 = np.float32
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(f32) + 0.5
    x, y = xs[None], ys[None]

    dx = rng.uniform(-1.5, 1.5, n).astype(f32)[:, None, None]
    dy = rng.uniform(-1.0, 1.0, n).astype(f32)[:, None, None]
    scale = rng.uniform(0.93, 1.07, n).astype(f32)[:, None, None]
    shade = rng.random(n).astype(f32)
    bg = rng.uniform(0.35, 0.95, (n, 3)).astype(f32)
    shirt = rng.uniform(0.1, 0.9, (n, 3)).astype(f32)
    hair_jitter = rng.uniform(-0.05, 0.05, n).astype(f32)

    skin_names = ATTRIBUTES["skin_tone"]
    lo = np.array([SKIN_RANGES[skin_names[i]][0] for i in attributes["skin_tone"]], dtype=f32)
    hi = np.array([SKIN_RANGES[skin_names[i]][1] for i in attributes["skin_tone"]], dtype=f32)
    skin = lo + shade[:, None] * (hi - lo)
    hair_names = ATTRIBUTES["hair_color"]
    hair = np.array([HAIR_COLORS[hair_names[i]] for i in attributes["hair_color"]], dtype=f32)
    hair = np.clip(hair + hair_jitter[:, None], 0, 1)

    cx, cy = 16.0 + dx, 14.0 + dy
    rx, ry = 7.2 * scale, 8.6 * scale
    long_hair = attributes["hair_length"][:, None, None] == 1
    glasses = attributes["eyeglasses"][:, None, None] == 1
    smile = attributes["smile"][:, None, None] == 1

    canvas = np.broadcast_to(bg[:, None, None, :], (n, SIZE, SIZE, 3)).copy()
    # Long hair hangs behind the head down to the shoulders.
    hang = _soft(np.maximum.reduce([np.abs(x - cx) - (rx + 2.6), (cy - 2) - y, y - (cy + 13.5)]))
    _paint(canvas, hang * long_hair, hair)
    # Shoulders and neck.
    _paint(canvas, _ellipse(x, y, 16.0 + 0.5 * dx, 35.0, 12.5, 8.0), shirt)
    neck = _soft(np.maximum(np.abs(x - cx) - 2.6 * scale, np.maximum(cy + 5 - y, y - 29.5)))
    _paint(canvas, neck, skin)
    # Head.
    _paint(canvas, _ellipse(x, y, cx, cy, rx, ry), skin)
    # Hair cap: upper part of a slightly larger ellipse, above the forehead line.
    cap = np.minimum(_ellipse(x, y, cx, cy - 0.6, rx + 1.2, ry + 1.0), _soft(y - (cy - 3.6 * scale)))
    _paint(canvas, cap, hair)
    # Eyes.
    ex, ey = 3.0 * scale, cy - 0.3
    for side in (-1.0, 1.0):
        _paint(canvas, _ellipse(x, y, cx + side * ex, ey, 0.95, 1.05), EYE_COLOR)
    # Eyeglasses: tinted lenses inside thick dark rims, a bridge and temples.
    for side in (-1.0, 1.0):
        r = np.sqrt((x - (cx + side * ex)) ** 2 + (y - ey) ** 2)
        lens = _soft(r - 2.4)
        _paint(canvas, lens * glasses * 0.45, LENS_COLOR)
        rim = _soft(np.abs(r - 2.6) - 0.55)
        _paint(canvas, rim * glasses, FRAME_COLOR)
    bridge = _soft(np.maximum(np.abs(x - cx) - 0.9, np.abs(y - (ey - 0.6)) - 0.45))
    temples = _soft(np.maximum(np.abs(np.abs(x - cx) - (ex + 3.6)) - 1.0, np.abs(y - ey) - 0.45))
    _paint(canvas, np.maximum(bridge, temples) * glasses, FRAME_COLOR)
    # Mouth: an open half-moon with teeth when smiling, a flat closed line otherwise.
    my = cy + 4.4 * scale
    half_moon = np.minimum(_ellipse(x, y, cx, my - 0.4, 3.6 * scale, 2.7 * scale), _soft(my - 0.4 - y))
    teeth = np.minimum(half_moon, _soft(y - (my + 0.5)))
    flat = _soft(np.maximum(np.abs(x - cx) - 2.4 * scale, np.abs(y - (my + 0.3)) - 0.5))
    _paint(canvas, np.where(smile, half_moon, flat), MOUTH_COLOR)
    _paint(canvas, teeth * smile, TEETH_COLOR)

    images = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    params = np.stack([dx[:, 0, 0], dy[:, 0, 0], scale[:, 0, 0], shade, *bg.T, *shirt.T, hair_jitter], axis=1)
    return images, params.astype(f32)


def generate(n: int, world: World = BIASED_WORLD, seed: int = 0) -> FaceBatch:
    """n faces drawn from `world`; the same (n, world, seed) always gives the same batch."""
    rng = np.random.default_rng(seed)
    attributes = world.sample_attributes(rng, n)
    images, params = render(attributes, rng)
    return FaceBatch(images=images, attributes=attributes, params=params)


def caption_for(attributes: dict[str, int], rng: np.random.Generator, mention_prob: float = 0.5) -> str:
    """A caption that mentions a random subset of the face's attributes, in varied phrasing."""
    phrases = []
    for name, index in attributes.items():
        if rng.random() < mention_prob:
            options = ATTRIBUTE_PHRASES[name][ATTRIBUTES[name][index]]
            phrases.append(options[rng.integers(len(options))])
    rng.shuffle(phrases)
    subject = SUBJECTS[rng.integers(len(SUBJECTS))]
    if not phrases:
        return subject
    if len(phrases) == 1:
        return f"{subject} {phrases[0]}"
    return f"{subject} {', '.join(phrases[:-1])} and {phrases[-1]}"


SUBJECTS = ("a photo of a person", "a picture of a person", "a portrait of a person",
            "a photo of a face")
ATTRIBUTE_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "skin_tone": {"light": ("with light skin", "with fair skin"),
                  "dark": ("with dark skin", "with brown skin")},
    "hair_length": {"short": ("with short hair",), "long": ("with long hair",)},
    "eyeglasses": {"no": ("without eyeglasses", "not wearing glasses"),
                   "yes": ("wearing eyeglasses", "with glasses")},
    "smile": {"no": ("not smiling", "with a neutral face"), "yes": ("smiling", "with a smile")},
    "hair_color": {"black": ("with black hair",), "brown": ("with brown hair",),
                   "blond": ("with blond hair",), "gray": ("with gray hair",)},
}
