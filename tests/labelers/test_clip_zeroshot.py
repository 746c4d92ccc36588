"""ClipZeroShotLabeler with a tiny random CLIP saved to disk (model, CLIP-format tokenizer and
image-processor config), loaded back offline the way a real local CLIP is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.labelers.clip_zeroshot import ClipModelNotFound, ClipZeroShotLabeler

TEMPLATES = ["a photo of a {}.", "a portrait of a {}"]
CLASSES = {"gender": ["woman", "man"], "hair": ["black hair", "blond hair", "gray hair"]}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    from audit.labelers.clip_zeroshot import _image_processor_class
    from audit.zoo.tokenizer import save_tokenizer

    directory = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = save_tokenizer(directory, max_length=16)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8)
    CLIPModel(config).save_pretrained(directory)
    processor = _image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def labeler(tiny_clip):
    return ClipZeroShotLabeler(tiny_clip, classes=CLASSES, templates=TEMPLATES)


def test_probabilities_shapes_and_validity(labeler, check):
    torch.manual_seed(1)
    images = torch.rand(5, 3, 40, 48)  # not square, not 32: the image processor resizes and crops
    result = labeler.label(images)
    check(result, labeler, 5)
    assert labeler.attributes == CLASSES
    assert result.probs["gender"].shape == (5, 2) and result.probs["hair"].shape == (5, 3)
    assert result.valid.all() and result.reasons == [None] * 5
    assert labeler.describe()["templates"] == TEMPLATES


def test_class_prompts_are_built_from_templates(labeler):
    assert labeler.prompts["gender"] == {"woman": ["a photo of a woman.", "a portrait of a woman"],
                                         "man": ["a photo of a man.", "a portrait of a man"]}
    assert labeler.prompts["hair"]["gray hair"] == ["a photo of a gray hair.", "a portrait of a gray hair"]
    # class embedding = normalized mean of its normalized template embeddings
    expected = torch.nn.functional.normalize(labeler.encode_texts(labeler.prompts["gender"]["man"]).mean(0), dim=0)
    torch.testing.assert_close(labeler.class_embeddings["gender"][1], expected)


def test_probabilities_are_softmax_of_scaled_cosines(labeler):
    """Independent check with the raw transformers API: processor -> CLIPModel logits."""
    torch.manual_seed(2)
    images = torch.rand(3, 3, 32, 32)
    result = labeler.label(images)
    pixels = labeler.processor(images=list((images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()),
                               return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = labeler.model(pixel_values=pixels, **labeler.tokenizer(
            [p for c in labeler.prompts["hair"].values() for p in c], padding=True, return_tensors="pt"))
    image = torch.nn.functional.normalize(out.image_embeds, dim=-1)
    text = torch.nn.functional.normalize(out.text_embeds, dim=-1).view(3, 2, -1).mean(1)
    text = torch.nn.functional.normalize(text, dim=-1)
    expected = (labeler.model.logit_scale.exp() * image @ text.T).softmax(-1).detach().numpy()
    np.testing.assert_allclose(result.probs["hair"], expected, atol=1e-5)
    # image_text_scores: cosine similarities [N, T], the CLIP score's raw material
    scores = labeler.image_text_scores(images, ["a photo of a woman.", "a photo of a man."])
    assert scores.shape == (3, 2) and np.all(np.abs(scores) <= 1 + 1e-6)
    cos = image @ torch.nn.functional.normalize(out.text_embeds, dim=-1)[[0]].T  # "a photo of a black hair."
    np.testing.assert_allclose(labeler.image_text_scores(images, ["a photo of a black hair."]), cos.numpy(), atol=1e-5)


def test_without_templates_texts_are_prompts_and_batches_agree(tiny_clip):
    labeler = ClipZeroShotLabeler(tiny_clip, classes={"smile": {"smiling": ["a smiling face", "a happy face"],
                                                                "neutral": "a neutral face"}}, batch_size=2)
    assert labeler.prompts["smile"] == {"smiling": ["a smiling face", "a happy face"], "neutral": ["a neutral face"]}
    images = torch.rand(5, 3, 32, 32)
    whole = ClipZeroShotLabeler(tiny_clip, classes={"smile": labeler.prompts["smile"]}).label(images)
    np.testing.assert_allclose(labeler.label(images).probs["smile"], whole.probs["smile"], atol=1e-5)
    # no classes: used for CLIP score only
    empty = ClipZeroShotLabeler(tiny_clip, classes={})
    assert empty.attributes == {} and empty.label(images).valid.all()
    with pytest.raises(ValueError, match="template"):
        ClipZeroShotLabeler(tiny_clip, classes=CLASSES, templates=["no placeholder"])


def test_missing_model_is_one_clear_error(tmp_path):
    missing = tmp_path / "no-clip-here"
    with pytest.raises(ClipModelNotFound) as caught:
        ClipZeroShotLabeler(missing, classes=CLASSES)
    assert isinstance(caught.value, FileNotFoundError)
    assert str(missing) in str(caught.value) and "save_pretrained" in str(caught.value)
    with pytest.raises(ClipModelNotFound, match="not-a-cached/clip-model"):
        ClipZeroShotLabeler("not-a-cached/clip-model", classes=CLASSES)
