"""What a generation takes and gives: its options (GenerationConfig), its result with timings
(Generation), and the prefill's inputs (PrefillInputs). colrag.vlm.generator runs them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import numpy as np

from .constants import SYSTEM_PROMPT
from .sampling import SamplingParams


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: length, sampling (transformers' semantics, colrag.vlm.sampling), image budget."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0
    max_pixels: int | None = None  # per image computed from pixels; None: the bundle's
    system: str = SYSTEM_PROMPT

    @classmethod
    def of(cls, config: GenerationConfig | None, options: dict[str, Any]) -> GenerationConfig:
        """`config` (or the defaults) with `options` replacing fields; an unknown option is an error."""
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        return replace(config or cls(), **options)

    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.top_k, self.repetition_penalty, self.seed)


class PrefillInputs(NamedTuple):
    """What the prefill runs on. With a prefix cache hit, only the tokens after the images are left to run."""

    prompt_ids: np.ndarray  # (S,) the whole prompt
    embeds: np.ndarray  # (1, S', H) the tokens still to run
    positions: np.ndarray  # (3, 1, S')
    rope_delta: int  # decode positions: past length + rope delta
    past: list | None  # the cached prefix's k/v, or None
    prefix_key: str | None  # where the prefix's k/v go in the prefix cache (None: not cached)
    n_prefix: int  # prompt tokens up to the last image (its k/v do not depend on the question)


@dataclass
class Generation:
    """One answer: its text and ids, and where the time went."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)  # generated ids; ends with the eos id when it stopped on one
    finish_reason: str = ""  # "eos" or "length"
    n_prompt_tokens: int = 0
    n_image_tokens: int = 0
    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefix_cached: bool = False  # the images' part of the prompt came from the prefix cache (no vision, short prefill)

    @property
    def n_new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def decode_tokens_per_s(self) -> float:
        steps = max(0, len(self.token_ids) - 1)  # the first token comes from the prefill
        return steps / self.decode_s if self.decode_s > 0 else 0.0
