"""The tokenizer wrapper and prompt builders equal transformers on the real Qwen2-VL tokenizer."""

from __future__ import annotations

import pytest

from colrag.constants import IMAGE_PAD_ID
from colrag.tokenization import IncrementalDecoder, Tokenizer, chat_prompt_ids, pad_left

TEXTS = [
    "What was the revenue in 2023?",
    "この図の売上はいくらですか？",
    "图表显示了什么趋势？",
    "Emoji 📈 and accents: café, naïve",
    "<|im_start|>user\nhello<|im_end|>",
]


@pytest.fixture(scope="module")
def tokenizers_pair(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    return Tokenizer.from_dir(tokenizer_dir), transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_transformers(tokenizers_pair, text):
    ours, ref = tokenizers_pair
    assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ours.encode(text), skip_special_tokens=False) == text


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_chat_prompt_equals_checkpoint_template(tokenizers_pair, n_images):
    ours, tok = tokenizers_pair
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": "この表の合計は？"}]
    text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    counts = [6, 20][:n_images]
    pieces = text.split("<|image_pad|>")
    expanded = pieces[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(counts, pieces[1:]))
    want = tok(expanded, add_special_tokens=False)["input_ids"]
    got = chat_prompt_ids(ours, "この表の合計は？", counts)
    assert got == want
    assert got.count(IMAGE_PAD_ID) == sum(counts)


def test_incremental_decoder_never_emits_replacement_chars(tokenizers_pair):
    ours, _ = tokenizers_pair
    text = "日本語の質問：売上高は前年比で何パーセント増えましたか？🙂"
    decoder = IncrementalDecoder(ours)
    pieces = [decoder.add(i) for i in ours.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_pad_left():
    ids, mask = pad_left([[1, 2, 3], [4]], 0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
