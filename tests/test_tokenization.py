"""The tokenizer wrapper and prompt builders equal transformers on the real Qwen2-VL tokenizer."""

from __future__ import annotations

import time

import pytest

from colrag.errors import BundleError, InputError
from colrag.vlm.constants import IM_START_ID, IMAGE_PAD_ID, RETRIEVER_PAGE_PROMPT, RETRIEVER_QUERY_PREFIX
from colrag.vlm.tokenization import (
    IncrementalDecoder,
    Tokenizer,
    chat_prompt_ids,
    pad_left,
    retriever_page_ids,
    retriever_query_ids,
)

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
    expanded = pieces[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(counts, pieces[1:], strict=True))
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


QUERIES = ["What was the revenue in 2023?", "この図の売上はいくらですか？", "  leading spaces\nand a newline", "📈"]


@pytest.fixture(scope="module")
def colqwen2_processor(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    image_processor = transformers.Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=768 * 28 * 28)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    return transformers.ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)


def test_query_ids_equal_colqwen2_processor(tokenizers_pair, colqwen2_processor):
    ours, _ = tokenizers_pair
    batch = colqwen2_processor.process_queries(QUERIES)
    for row, query in enumerate(QUERIES):
        want = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert retriever_query_ids(ours, query) == want
    assert colqwen2_processor.query_prefix == RETRIEVER_QUERY_PREFIX


@pytest.mark.parametrize("size", [(56, 56), (640, 480), (1240, 1754)])
def test_page_ids_equal_colqwen2_processor(tokenizers_pair, colqwen2_processor, size):
    from PIL import Image

    ours, _ = tokenizers_pair
    batch = colqwen2_processor.process_images([Image.new("RGB", size, (200, 10, 10))])
    n_tokens = int(batch["image_grid_thw"][0].prod()) // 4
    assert retriever_page_ids(ours, n_tokens) == batch["input_ids"][0].tolist()
    assert colqwen2_processor.visual_prompt_prefix == RETRIEVER_PAGE_PROMPT


def test_chat_prompt_of_768_images_tokens_is_fast(tokenizers_pair):
    ours, _ = tokenizers_pair
    start = time.perf_counter()
    for _ in range(20):
        ids = chat_prompt_ids(ours, "What is the total?", [768, 768])
    assert (time.perf_counter() - start) / 20 < 0.05
    assert ids.count(IMAGE_PAD_ID) == 1536 and ids[0] == IM_START_ID


def test_image_tokens_in_user_text_are_a_clear_error(tokenizers_pair):
    ours, _ = tokenizers_pair
    with pytest.raises(InputError, match="image or video token"):
        chat_prompt_ids(ours, "look <|image_pad|>", [4])
    with pytest.raises(InputError):
        retriever_query_ids(ours, "<|image_pad|>")


def test_encode_adds_no_bos_and_maps_special_tokens(tokenizers_pair):
    ours, ref = tokenizers_pair
    assert ours.encode("<|im_start|>user") == [IM_START_ID, ours.token_to_id("user")]
    assert ref("hi")["input_ids"] == ours.encode("hi")  # transformers adds nothing either


def test_decode_skips_special_tokens(tokenizers_pair):
    ours, ref = tokenizers_pair
    ids = ours.encode("<|im_start|>assistant\n答えは42です。<|im_end|>")
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True) == "assistant\n答えは42です。"


def test_incremental_decoder_matches_full_decode_on_long_streams(tokenizers_pair):
    ours, _ = tokenizers_pair
    text = ("売上高は前年比12.5%増加しました。" * 12) + "中文测试🙂🎉 done"
    ids = [*ours.encode(text), 151645]
    decoder = IncrementalDecoder(ours)
    pieces = [decoder.add(i) for i in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == ours.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 10  # it streams, not just at flush


def test_bad_tokenizer_dir_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        Tokenizer.from_dir(tmp_path)


def test_chat_template_is_the_checkpoint_file(tokenizers_pair, tokenizer_dir):
    import json

    _, tok = tokenizers_pair
    assert tok.chat_template == json.loads((tokenizer_dir / "chat_template.json").read_text())["chat_template"]
