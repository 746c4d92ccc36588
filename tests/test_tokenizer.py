from transformers import CLIPTokenizer

from audit.zoo.tokenizer import caption_words, save_tokenizer


def test_caption_words_are_single_tokens_and_reload(tmp_path):
    save_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    for word in caption_words():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, (word, tokenizer.convert_ids_to_tokens(ids))
    ids = tokenizer("a photo of a zebra").input_ids  # unknown words fall back to characters
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]


def test_vocabulary_ids_are_the_same_in_every_process():
    """The tokenizers trainer breaks ties in hash order, which changes per process."""
    import subprocess
    import sys

    code = ("import json; from audit.zoo.tokenizer import build_vocab_and_merges, caption_words; "
            "print(json.dumps(build_vocab_and_merges(caption_words())[0], sort_keys=True))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(3)}
    assert len(runs) == 1
