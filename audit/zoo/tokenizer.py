"""A CLIP-format BPE tokenizer for the SynthFaces caption vocabulary (and a T5-format one, for
tiny random transformer pipelines in tests and benchmarks).

The zoo's text models are saved in the standard transformers layout (vocab.json + merges.txt),
so the loading code that serves a real CLIP/Stable Diffusion tokenizer serves them too. The
vocabulary holds every single character plus each caption word, built up by left-to-right
merges, so any text tokenizes (unknown words fall back to characters).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

from audit.zoo.synthfaces import ATTRIBUTE_PHRASES, SUBJECTS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

EXTRA_WORDS = (
    "a", "an", "the", "of", "with", "and", "or", "without", "wearing", "not", "person", "people",
    "face", "man", "woman", "photo", "picture", "portrait", "someone", "skin", "hair",
    "eyeglasses", "glasses", "smiling", "smile", "neutral", "light", "dark", "fair", "brown",
    "black", "blond", "gray", "grey", "long", "short", "no", "yes", "who", "is", "are", "has",
    "in", "on", "at", "for", "by", "all", "kinds", "irrespective", "their", "gender", "race",
    "ethnicity", "diverse", "different", "group", "if", "appearance",
)


def caption_words() -> list[str]:
    words = set(EXTRA_WORDS)
    for text in SUBJECTS:
        words.update(text.split())
    for per_class in ATTRIBUTE_PHRASES.values():
        for phrases in per_class.values():
            for phrase in phrases:
                words.update(phrase.split())
    return sorted(words)


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """Train a BPE (tokenizers library) on the caption words, large enough that every word
    becomes one token; every single character (plain and word-final) stays in the vocabulary."""
    from tokenizers import Tokenizer, models, trainers

    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    trainer = trainers.BpeTrainer(vocab_size=10_000, min_frequency=1, initial_alphabet=symbols,
                                  end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator(words, trainer)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.model.save(tmp)
        learned = json.loads((Path(tmp) / "vocab.json").read_text())
        merges = (Path(tmp) / "merges.txt").read_text().splitlines()[1:]
    tokens = symbols + [s + "</w>" for s in symbols]
    # The trainer breaks ties between equally frequent pairs in hash order, so its ids change
    # from run to run; ordering the learnt tokens by (length, text) makes the ids reproducible.
    tokens += sorted((t for t in learned if t not in set(tokens)), key=lambda t: (len(t), t))
    tokens += [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def load_or_save_tokenizer(directory: str | Path, max_length: int = 24):
    """The tokenizer already in `directory` (a model's text encoder learnt its ids: a training
    run that resumes must keep them), else a new one written there."""
    from transformers import CLIPTokenizer

    if any((Path(directory) / name).exists() for name in ("vocab.json", "tokenizer.json")):
        return CLIPTokenizer.from_pretrained(directory)
    return save_tokenizer(directory, max_length)


def save_tokenizer(directory: str | Path, max_length: int = 24):
    """Write a CLIPTokenizer for the caption vocabulary to `directory` and return it."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(caption_words())
    (directory / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {"model_max_length": max_length, "bos_token": BOS, "eos_token": EOS,
              "unk_token": EOS, "pad_token": EOS, "tokenizer_class": "CLIPTokenizer"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    return CLIPTokenizer.from_pretrained(directory)


def t5_tokenizer(max_length: int = 512):
    """A Unigram T5Tokenizer over the caption words (<pad>=0, </s>=1, <unk>=2, as T5's), padding to
    T5's 512 by default: the transformer families' prompt encoding depends on that length."""
    from transformers import T5Tokenizer

    words = sorted(set(caption_words()))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0 - 0.01 * i) for i, w in enumerate(words)]
    vocab += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz\u2581,.'-"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)
