import numpy as np
import pytest

from audit.zoo.synthfaces import (
    ATTRIBUTES,
    BIASED_WORLD,
    UNIFORM_WORLD,
    Correlation,
    World,
    caption_for,
    generate,
)


def test_generation_is_seeded_and_shaped():
    a, b = generate(64, seed=3), generate(64, seed=3)
    assert a.images.shape == (64, 32, 32, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images)
    assert all(np.array_equal(a.attributes[k], b.attributes[k]) for k in ATTRIBUTES)
    assert not np.array_equal(a.images, generate(64, seed=4).images)
    x = a.tensor()
    assert tuple(x.shape) == (64, 3, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_biased_world_marginals_and_correlation():
    n = 200_000
    attributes = BIASED_WORLD.sample_attributes(np.random.default_rng(0), n)
    for name, target in BIASED_WORLD.marginals.items():
        observed = np.bincount(attributes[name], minlength=len(target)) / n
        assert np.abs(observed - np.asarray(target)).max() < 0.005, name
    gray = attributes["hair_color"] == ATTRIBUTES["hair_color"].index("gray")
    glasses = attributes["eyeglasses"] == 1
    assert glasses[gray].mean() == pytest.approx(0.5, abs=0.01)
    assert glasses[~gray].mean() == pytest.approx((0.2 - 0.1 * 0.5) / 0.9, abs=0.005)
    batch = generate(500, BIASED_WORLD, seed=0)  # generate() draws from the same sampler
    assert np.array_equal(batch.attributes["skin_tone"],
                          BIASED_WORLD.sample_attributes(np.random.default_rng(0), 500)["skin_tone"])


def test_every_attribute_changes_the_pixels():
    """Flipping one attribute with everything else fixed must change the image visibly."""
    base = {name: np.zeros(1, dtype=np.int64) for name in ATTRIBUTES}
    from audit.zoo.synthfaces import render

    reference, _ = render(base, np.random.default_rng(0))
    for name, classes in ATTRIBUTES.items():
        for k in range(1, len(classes)):
            attrs = dict(base, **{name: np.full(1, k)})
            image, _ = render(attrs, np.random.default_rng(0))
            changed = (np.abs(image.astype(int) - reference.astype(int)).max(-1) > 40).sum()
            assert changed >= 12, f"{name}={classes[k]} changes only {changed} pixels"


def test_world_validation_errors_name_the_problem():
    with pytest.raises(ValueError, match="skin_tone"):
        World(marginals={**UNIFORM_WORLD.marginals, "skin_tone": (0.5, 0.6)})
    with pytest.raises(ValueError, match="incompatible"):
        World(marginals=BIASED_WORLD.marginals,
              correlations=(Correlation("eyeglasses", "hair_color", "black", (0.0, 1.0)),))


def test_captions_mention_true_attributes_only():
    rng = np.random.default_rng(0)
    attrs = {"skin_tone": 1, "hair_length": 0, "eyeglasses": 1, "smile": 0, "hair_color": 3}
    captions = [caption_for(attrs, rng) for _ in range(200)]
    text = " ".join(captions)
    assert "dark skin" in text or "brown skin" in text
    assert "light skin" not in text and "long hair" not in text and "blond" not in text
    assert any(c in ("a photo of a person", "a picture of a person", "a portrait of a person",
                     "a photo of a face") for c in captions)
