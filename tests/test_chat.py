"""`ask -i` conversations: the prompt of a follow-up equals the checkpoint's chat template for the
whole conversation, token for token (real Qwen2-VL tokenizer)."""

from __future__ import annotations

import pytest

from colrag.vlm.chat import Conversation
from colrag.vlm.tokenization import Tokenizer, chat_prompt_ids


@pytest.fixture(scope="module")
def tokenizers_pair(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    return Tokenizer.from_dir(tokenizer_dir), transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


def template_ids(tok, messages, counts):
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pieces = text.split("<|image_pad|>")
    expanded = pieces[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(counts, pieces[1:], strict=True))
    return tok(expanded, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("n_images", [1, 2])
def test_follow_up_prompt_equals_the_chat_template(tokenizers_pair, n_images):
    ours, tok = tokenizers_pair
    counts = [6, 20][:n_images]
    conv = Conversation()
    conv.add("What was revenue in 2020?", " 12 million euros. ")
    conv.add("And in 2021?", "15 million.")
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}] * n_images + [{"type": "text", "text": "What was revenue in 2020?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "12 million euros."}]},
        {"role": "user", "content": [{"type": "text", "text": "And in 2021?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "15 million."}]},
        {"role": "user", "content": [{"type": "text", "text": "Which year grew most?"}]},
    ]
    assert chat_prompt_ids(ours, conv.prompt("Which year grew most?"), counts) == template_ids(tok, messages, counts)


def test_reset_and_the_turn_limit():
    conv = Conversation(max_turns=2)
    assert conv.prompt("q") == "q"
    for i in range(3):
        conv.add(f"q{i}", f"a{i}")
    prompt = conv.prompt("q3")
    assert "q0" not in prompt and prompt.startswith("q1<|im_end|>\n<|im_start|>assistant\na1") and prompt.endswith("q3")
    conv.reset()
    assert conv.prompt("q4") == "q4"
