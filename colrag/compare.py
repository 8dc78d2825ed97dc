"""How far one bundle's outputs drift from another's on your own pages.

The drift that export records in a quantized bundle's manifest was measured on the
export check inputs; with the real weights and real documents it can differ. This
runs two bundles of the same model (typically fp32 and int8) on the same pages and
reports what matters for each kind:

- retrievers: cosine of the page and query embeddings row by row, and whether the
  late-interaction ranking of those pages agrees (top-1, overlap of the top k);
- generators: greedy answers, token by token (how many positions are equal and where
  the first difference is).

Bundles are loaded one after the other, so peak memory is that of the larger one.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import BundleError, InputError
from .vlm.bundle import load_manifest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Used when no queries are given: the kind of question people ask of reports.
DEFAULT_QUERIES = (
    "What does the chart show?",
    "total revenue by year",
    "table of results",
    "conclusions and recommendations",
    "energy use by sector",
    "a diagram of the system architecture",
)
DEFAULT_QUESTION = "What does this page show?"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Runtime:
    """Where a bundle's graphs run (colrag.vlm.backends): None = COLRAG_BACKEND / COLRAG_PRECISION, else auto."""

    backend: str | None = None
    precision: str | None = None


@dataclass
class Page:
    label: str  # "file.pdf p3" or "photo.jpg"
    image: object  # PIL.Image.Image, RGB


def bundle_kind(bundle_a: Path, bundle_b: Path) -> str:
    """The kind both bundles hold ('retriever' or 'generator'); BundleError when they differ."""
    kinds = [load_manifest(b).get("kind") for b in (bundle_a, bundle_b)]
    if kinds[0] != kinds[1]:
        raise BundleError(f"cannot compare a {kinds[0]!r} bundle ({bundle_a}) with a {kinds[1]!r} one ({bundle_b})")
    if kinds[0] not in ("retriever", "generator"):
        raise BundleError(f"{bundle_a}: unknown bundle kind {kinds[0]!r}")
    return kinds[0]


def sample_pages(
    paths: Iterable[str | os.PathLike],
    max_pages: int,
    target_pixels: int,
    password: str | None = None,
    warn: Progress = lambda _: None,
) -> list[Page]:
    """Up to max_pages page images from PDFs (taken in turn from each document) and image files.

    A PDF that cannot be opened is reported through `warn` and skipped, like `colrag index` does.
    """
    from .render import PdfError, RenderOptions, find_pdfs, open_pdf, render_page
    from .vlm.preprocess import load_image

    if max_pages < 1:
        raise InputError(f"--pages must be >= 1, got {max_pages}")
    images: list[Page] = []
    pdf_paths: list[str | os.PathLike] = []
    for raw in paths:
        if Path(raw).suffix.lower() in IMAGE_SUFFIXES:
            images.append(Page(Path(raw).name, load_image(raw)))
        else:
            pdf_paths.append(raw)
    docs = []
    for path in find_pdfs(pdf_paths) if pdf_paths else []:
        try:
            docs.append((path, open_pdf(path, password)))
        except PdfError as exc:
            warn(f"skipped {path}: {exc}")
    opts = RenderOptions(target_pixels=target_pixels)
    pages = images[:max_pages]
    try:
        index = 0
        while len(pages) < max_pages and any(index < doc.page_count for _, doc in docs):
            for path, doc in docs:
                if index < doc.page_count and len(pages) < max_pages:
                    try:
                        pages.append(Page(f"{path.name} p{index + 1}", render_page(doc, index, opts).image))
                    except Exception as exc:  # one bad page must not stop the comparison
                        warn(f"skipped {path.name} p{index + 1}: {exc}")
            index += 1
    finally:
        for _, doc in docs:
            doc.close()
    if not pages:
        raise InputError("no pages to compare: give PDFs or images that can be read")
    return pages


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of a with the same row of b."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-12)


# -- retriever -----------------------------------------------------------------------


@dataclass
class RetrieverDrift:
    pages: int
    queries: int
    top_k: int
    page_cosine_mean: float
    page_cosine_min: float
    query_cosine_mean: float
    query_cosine_min: float
    top1_agreement: float  # share of queries whose best page is the same
    top_k_overlap: float  # mean |top-k(a) ∩ top-k(b)| / k over the queries
    worst_page: str  # the page with the lowest mean cosine
    # queries whose best page differs: {query, page_a, page_b, gap}, gap = how far page_b trails
    # page_a in the first bundle's scores (relative): a tiny gap means a near-tie, not a broken model
    disagreements: list = field(default_factory=list)


def _embed_all(
    bundle: Path, pages: Sequence[Page], queries: Sequence[str], threads, progress: Progress, runtime: Runtime
):
    from .vlm.retriever import Retriever

    retriever = Retriever.load(bundle, threads=threads, backend=runtime.backend, precision=runtime.precision)
    page_vectors = []
    for i, page in enumerate(pages, 1):
        progress(f"{bundle}: page {i}/{len(pages)} ({page.label})")
        page_vectors.extend(retriever.embed_images([page.image]))
    query_vectors = retriever.embed_queries(list(queries))
    del retriever
    gc.collect()
    return page_vectors, query_vectors


def compare_retrievers(
    bundle_a: Path,
    bundle_b: Path,
    pages: Sequence[Page],
    queries: Sequence[str] = DEFAULT_QUERIES,
    *,
    top_k: int = 5,
    threads: int | None = None,
    progress: Progress = lambda _: None,
    runtime_a: Runtime = Runtime(),
    runtime_b: Runtime = Runtime(),
) -> RetrieverDrift:
    """runtime_a / runtime_b: where each side runs.

    Comparing one bundle on two backends measures the backend's drift."""
    from .scoring import maxsim

    if not queries:
        raise InputError("no queries to compare")
    pa, qa = _embed_all(bundle_a, pages, queries, threads, progress, runtime_a)
    pb, qb = _embed_all(bundle_b, pages, queries, threads, progress, runtime_b)
    for x, y, what in [(x, y, p.label) for x, y, p in zip(pa, pb, pages, strict=True)] + [
        (x, y, q) for x, y, q in zip(qa, qb, queries, strict=True)
    ]:
        if x.shape != y.shape:
            raise BundleError(
                f"the two bundles give {what!r} {x.shape[0]} and {y.shape[0]} vectors: they do not "
                "preprocess alike (different pixel caps or prompts), so they are not variants of one model"
            )
    page_cos = [row_cosines(x, y) for x, y in zip(pa, pb, strict=True)]
    query_cos = [row_cosines(x, y) for x, y in zip(qa, qb, strict=True)]
    sa, sb = maxsim(qa, pa), maxsim(qb, pb)  # (queries, pages)
    k = min(top_k, len(pages))
    top_a, top_b = np.argsort(-sa, axis=1)[:, :k], np.argsort(-sb, axis=1)[:, :k]
    overlap = [len(set(x) & set(y)) / k for x, y in zip(top_a, top_b, strict=True)]
    worst = int(np.argmin([c.mean() for c in page_cos]))
    disagreements = [
        {
            "query": q,
            "page_a": pages[a].label,
            "page_b": pages[b].label,
            "gap": float((sa[i, a] - sa[i, b]) / abs(sa[i, a])),
        }
        for i, (q, a, b) in enumerate(zip(queries, sa.argmax(1), sb.argmax(1), strict=True))
        if a != b
    ]
    return RetrieverDrift(
        pages=len(pages),
        queries=len(queries),
        top_k=k,
        page_cosine_mean=float(np.mean([c.mean() for c in page_cos])),
        page_cosine_min=float(min(c.min() for c in page_cos)),
        query_cosine_mean=float(np.mean([c.mean() for c in query_cos])),
        query_cosine_min=float(min(c.min() for c in query_cos)),
        top1_agreement=float((sa.argmax(1) == sb.argmax(1)).mean()),
        top_k_overlap=float(np.mean(overlap)),
        worst_page=pages[worst].label,
        disagreements=disagreements,
    )


# -- generator -----------------------------------------------------------------------


@dataclass
class AnswerDrift:
    page: str
    question: str
    tokens: int  # new tokens of the first bundle's answer
    equal_positions: int  # positions where both answers chose the same token
    first_difference: int | None  # 1-based position of the first different token; None when identical
    answer_a: str
    answer_b: str


@dataclass
class GeneratorDrift:
    answers: list[AnswerDrift] = field(default_factory=list)

    @property
    def identical(self) -> int:
        return sum(a.first_difference is None for a in self.answers)

    @property
    def token_agreement(self) -> float:
        """Share of positions (of the first bundle's answers) where the two chose the same token."""
        total = sum(a.tokens for a in self.answers)
        return sum(a.equal_positions for a in self.answers) / total if total else 1.0

    def as_dict(self) -> dict:
        return {
            "answers": [asdict(a) for a in self.answers],
            "identical": self.identical,
            "token_agreement": self.token_agreement,
        }


def _answer_all(
    bundle: Path,
    pages: Sequence[Page],
    questions: Sequence[str],
    max_new_tokens: int,
    max_pixels,
    threads,
    progress: Progress,
    runtime: Runtime,
):
    from .vlm.generator import Generator

    generator = Generator.load(
        bundle, threads=threads, prefix_cache=False, backend=runtime.backend, precision=runtime.precision
    )
    out = []
    for page in pages:
        for question in questions:
            progress(f"{bundle}: {page.label}: {question}")
            g = generator.generate(question, images=[page.image], max_new_tokens=max_new_tokens, max_pixels=max_pixels)
            out.append((g.token_ids, g.text))
    del generator
    gc.collect()
    return out


def compare_generators(
    bundle_a: Path,
    bundle_b: Path,
    pages: Sequence[Page],
    questions: Sequence[str] = (DEFAULT_QUESTION,),
    *,
    max_new_tokens: int = 32,
    max_pixels: int | None = None,
    threads: int | None = None,
    progress: Progress = lambda _: None,
    runtime_a: Runtime = Runtime(),
    runtime_b: Runtime = Runtime(),
) -> GeneratorDrift:
    """Greedy answers of both bundles to every question about every page, compared token by token."""
    if not questions:
        raise InputError("no questions to compare")
    a = _answer_all(bundle_a, pages, questions, max_new_tokens, max_pixels, threads, progress, runtime_a)
    b = _answer_all(bundle_b, pages, questions, max_new_tokens, max_pixels, threads, progress, runtime_b)
    drift = GeneratorDrift()
    labels = [(p.label, q) for p in pages for q in questions]
    for (label, question), (ids_a, text_a), (ids_b, text_b) in zip(labels, a, b, strict=True):
        pairs = list(zip(ids_a, ids_b, strict=False))
        first = next((i + 1 for i, (x, y) in enumerate(pairs) if x != y), None)
        if first is None and len(ids_a) != len(ids_b):  # one stopped earlier
            first = len(pairs) + 1
        drift.answers.append(
            AnswerDrift(label, question, len(ids_a), sum(x == y for x, y in pairs), first, text_a, text_b)
        )
    return drift
