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
