"""What an answer is: its text, sources (file, page, score, where the page's features came
from) and timings; the pages shown to the generator; the generation options. colrag.ask
produces them; `colrag serve` sends them as JSON (Answer.as_dict / Answer.from_dict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FEATURES_INDEX = "index"
FEATURES_COMPUTED = "computed"
FEATURES_PREFIX_CACHE = "prefix-cache"


@dataclass(frozen=True)
class Source:
    file: str
    page: int  # 1-based
    score: float
    features: str  # "index" | "computed" | "prefix-cache"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "page": self.page, "score": round(float(self.score), 4), "features": self.features}


@dataclass
class Timings:
    """Seconds per step of one answer (load_s: models, once per Asker; not part of first_token_s)."""

    retrieve_s: float = 0.0  # embed the question + search the index
    vision_s: float = 0.0  # page features: read from the index, or render + vision tower
    prefill_s: float = 0.0
    first_token_s: float = 0.0  # from the question to its first token: retrieve + vision + prefill
    decode_s: float = 0.0
    new_tokens: int = 0
    load_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (v if isinstance(v, int) else round(v, 3)) for k, v in asdict(self).items()}


@dataclass
class Answer:
    text: str = ""
    sources: list[Source] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    n_prompt_tokens: int = 0
    prefix_cached: bool = False  # the pages' part of the prompt came from the page-prefix cache
    notes: list[str] = field(default_factory=list)  # e.g. why the index's page features were not used
    # what each step of the generator ran on: {"vision": ..., "prefill": "openvino 2026.4.1 bf16", "decode": ...}
    runtimes: dict[str, str | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (what `colrag serve` sends; `from_dict` reads it back)."""
        return {
            **asdict(self),
            "sources": [s.as_dict() for s in self.sources],
            "timings": self.timings.as_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Answer:
        return cls(
            **{k: d[k] for k in ("text", "finish_reason", "n_prompt_tokens", "prefix_cached")},
            sources=[Source(**s) for s in d["sources"]],
            timings=Timings(**d["timings"]),
            token_ids=list(d["token_ids"]),
            notes=list(d["notes"]),
            runtimes={
                str(k): None if v is None else str(v) for k, v in (d.get("runtimes") or {}).items()
            },  # older servers: none
        )


@dataclass
class Pages:
    """What the generator is shown: per page/image, its features or its image, and where they came from."""

    inputs: list  # ImageFeatures, PIL images or image paths
    kinds: list[str]  # FEATURES_INDEX or FEATURES_COMPUTED, per input
    hits: list = field(default_factory=list)  # colrag.search.Hit per page (none for --image)
    retrieve_s: float = 0.0
    pages_s: float = 0.0  # reading the stored features / rendering the pages
    notes: list[str] = field(default_factory=list)
    max_pixels: int | None = None  # the generator's pixel budget for the computed ones


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)
