"""Next-token choice from logits, with transformers' semantics, in numpy.

Order and meaning follow `GenerationMixin._get_logits_processor`:
    1. repetition penalty over every id in the sequence so far (prompt included):
       logit < 0 → logit * penalty, else logit / penalty (each id once)
    2. min_new_tokens: the eos ids are -inf until that many tokens were generated
    then, only when sampling (temperature > 0):
    3. temperature: logits / temperature
    4. top-k: logits below the k-th largest → -inf
    5. top-p: sort ascending, drop the tokens whose cumulative probability is
       <= 1 - top_p (the most probable token is always kept)
    6. sample from softmax; greedy (temperature 0) takes the argmax.

Sampling draws from a numpy Generator seeded by `seed`, so a seed reproduces a
run; it does not reproduce torch's random stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0):
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise InputError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top-k must be >= 0, got {self.top_k}")
        if not (self.repetition_penalty > 0):
            raise InputError(f"repetition penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: np.ndarray, seen_ids: Iterable[int], penalty: float) -> np.ndarray:
    """logits (V,) → penalised copy; every id in seen_ids is penalised once."""
    if penalty == 1.0:
        return logits
    ids = np.unique(np.fromiter(seen_ids, dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < logits.shape[-1])]
    out = logits.copy()
    picked = out[ids]
    out[ids] = np.where(picked < 0, picked * penalty, picked / penalty)
    return out


def apply_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the logits >= the k-th largest (ties at the threshold are kept, as in transformers)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits).astype(logits.dtype)


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = np.exp(x - x.max())
    return x / x.sum()


def apply_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filtering: drop the least probable tokens whose total probability is <= 1 - p."""
    if p >= 1.0:
        return logits
    order = np.argsort(logits, kind="stable")  # ascending
    cumulative = np.cumsum(_softmax(logits[order]))
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[-1] = False  # keep at least one token
    remove = np.zeros_like(remove_sorted)
    remove[order] = remove_sorted
    return np.where(remove, -np.inf, logits).astype(logits.dtype)


class Sampler:
    """Chooses each next token; one instance per generation (it owns the random stream)."""

    def __init__(self, params: SamplingParams, eos_ids: Iterable[int] = (), min_new_tokens: int = 0):
        self.params = params
        self.eos_ids = np.asarray(sorted(set(int(e) for e in eos_ids)), dtype=np.int64)
        self.min_new_tokens = int(min_new_tokens)
        self.rng = np.random.default_rng(params.seed)

    def process(self, logits: np.ndarray, seen_ids: Iterable[int], n_generated: int) -> np.ndarray:
        """The processed logits (V,) float32 that the choice is made from."""
        p = self.params
        x = np.asarray(logits, dtype=np.float32).reshape(-1)  # (V,)
        x = apply_repetition_penalty(x, seen_ids, p.repetition_penalty)
        if n_generated < self.min_new_tokens and self.eos_ids.size:
            x = x.copy()
            x[self.eos_ids[self.eos_ids < x.shape[0]]] = -np.inf
        if p.greedy:
            return x
        if p.temperature != 1.0:
            x = (x / np.float32(p.temperature)).astype(np.float32)
        x = apply_top_k(x, p.top_k)
        return apply_top_p(x, p.top_p)

    def __call__(self, logits: np.ndarray, seen_ids: Iterable[int], n_generated: int) -> int:
        x = self.process(logits, seen_ids, n_generated)
        if self.params.greedy:
            return int(np.argmax(x))  # first maximum, like torch.argmax
        probs = _softmax(x)  # (V,)
        cdf = np.cumsum(probs)
        return int(min(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"), len(cdf) - 1))
