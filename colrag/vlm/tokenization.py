"""The Qwen2-VL tokenizer through the `tokenizers` library, and prompt builders.

Prompts are built by tokenising the text pieces and splicing `<|image_pad|>` ids in,
so a 768-token image costs nothing to tokenise; tests check the result equals what
transformers' processors produce for the same prompt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import BundleError, InputError
from .constants import (
    IMAGE_PAD,
    IMAGE_PAD_ID,
    RETRIEVER_PAGE_PROMPT,
    RETRIEVER_QUERY_PREFIX,
    RETRIEVER_QUERY_SUFFIX,
    SYSTEM_PROMPT,
)


class Tokenizer:
    def __init__(self, tokenizer):
        self._tok = tokenizer

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise BundleError(f"no tokenizer.json in {path}")
        try:
            return cls(HFTokenizer.from_file(str(file)))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise BundleError(f"unreadable {file}: {str(exc).splitlines()[0]}") from exc

    def encode(self, text: str) -> list[int]:
        """Token ids; special tokens written in the text (e.g. <|im_start|>) map to their ids; no BOS."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


class IncrementalDecoder:
    """Turns a stream of ids into text pieces, holding back incomplete UTF-8 sequences.

    A Japanese character can span two byte-level tokens; decoding the first alone
    gives U+FFFD. We re-decode a short window and emit only text that no longer ends
    in a replacement character.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._emitted = 0  # characters of decode(self._ids) already returned

    def add(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        text = self._tok.decode(self._ids, self._skip)
        if text.endswith("\ufffd"):
            return ""
        piece = text[self._emitted :]
        self._emitted = len(text)
        if len(self._ids) > 64 and piece:  # keep the window short: restart after complete text
            self._ids, self._emitted = [], 0
        return piece

    def flush(self) -> str:
        text = self._tok.decode(self._ids, self._skip)
        piece = text[self._emitted :]
        self._ids, self._emitted = [], 0
        return piece


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id lists: ids (B, S) int64 and attention_mask (B, S) int64."""
    length = max((len(s) for s in seqs), default=0)
    ids = np.full((len(seqs), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    for row, seq in enumerate(seqs):
        if len(seq):
            ids[row, length - len(seq) :] = seq
            mask[row, length - len(seq) :] = 1
    return ids, mask


def expand_image_pads(ids: Sequence[int], image_token_counts: Sequence[int]) -> list[int]:
    """Replace the k-th <|image_pad|> id by image_token_counts[k] copies of it."""
    slots = [i for i, t in enumerate(ids) if t == IMAGE_PAD_ID]
    if len(slots) != len(image_token_counts):
        raise InputError(
            f"the prompt has {len(slots)} image slots for {len(image_token_counts)} images (is there an image "
            "token in the text?)"
        )
    out: list[int] = []
    prev = 0
    for slot, count in zip(slots, image_token_counts, strict=True):
        out += list(ids[prev:slot]) + [IMAGE_PAD_ID] * int(count)
        prev = slot + 1
    return out + list(ids[prev:])


def _check_user_text(text: str) -> None:
    if "<|image_pad|>" in text or "<|video_pad|>" in text:
        raise InputError("the text contains an image or video token (<|image_pad|> / <|video_pad|>); remove it")


def retriever_page_ids(tokenizer: Tokenizer, n_image_tokens: int, prompt: str = RETRIEVER_PAGE_PROMPT) -> list[int]:
    """ColQwen2's page prompt with <|image_pad|> expanded to n_image_tokens copies."""
    if prompt.count(IMAGE_PAD) != 1:
        raise BundleError(f"the retriever page prompt must hold exactly one {IMAGE_PAD}: {prompt!r}")
    return expand_image_pads(tokenizer.encode(prompt), [n_image_tokens])


def retriever_query_ids(
    tokenizer: Tokenizer, query: str, prefix: str = RETRIEVER_QUERY_PREFIX, suffix: str = RETRIEVER_QUERY_SUFFIX
) -> list[int]:
    """ColQwen2's query: "Query: " + q + "<|endoftext|>" * 10 + "\n" (as ColQwen2Processor.process_queries)."""
    _check_user_text(query)
    return tokenizer.encode(prefix + query + suffix)


def chat_prompt_ids(
    tokenizer: Tokenizer, question: str, image_token_counts: Sequence[int], system: str = SYSTEM_PROMPT
) -> list[int]:
    """The Qwen2-VL-Instruct chat prompt: system turn, user turn with the images first, assistant header.

    The text is tokenised in one piece with one <|image_pad|> per image (so whitespace and
    NFC normalisation at the seams tokenise exactly as in transformers), then each pad id is
    spliced out to the image's token count.
    """
    _check_user_text(question)
    _check_user_text(system)
    images = "<|vision_start|><|image_pad|><|vision_end|>" * len(image_token_counts)
    text = (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{images}{question}<|im_end|>\n<|im_start"
        "|>assistant\n"
    )
    return expand_image_pads(tokenizer.encode(text), image_token_counts)
