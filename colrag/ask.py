"""The answer pipeline: question -> best pages -> page features -> answer, with its sources.

    from colrag.ask import Asker

    with Asker.open() as asker:               # the default models and index (COLRAG_HOME)
        answer = asker.ask("What does the chart show?", max_new_tokens=128)
    print(answer.text, [s.as_dict() for s in answer.sources], answer.timings.as_dict())

Steps, each owned by one module:
  1. retrieve (colrag.search): the question's top `pages` pages of the index;
  2. page features (colrag.page_inputs): for each page, the vision tower's output stored by
     the index (colrag.store.features) when the generator has the index's vision tower, the
     pixel budget is the index's own and the features are intact; otherwise the page is
     rendered (colrag.render) at the index's budget (or --max-pixels) and the generator's
     vision tower computes them. Why features were not used is said once, in `notes`;
  3. generate (colrag.vlm.generator): prefill + decode; the page-prefix cache may skip the
     page's part of the prefill (a follow-up question);
  4. sources: file, page, score, and where each page's features came from
     ("index", "computed" or "prefix-cache").

`Asker.prepare` + `Asker.stream` split the same work for a caller that prints the
answer as it comes (the CLI) or asks follow-ups about the same pages (`ask -i`).
The result types (Answer, Source, Timings, Pages, GenerationOptions) live in colrag.answer
and are importable from here.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from .answer import (
    FEATURES_COMPUTED,
    FEATURES_INDEX,
    FEATURES_PREFIX_CACHE,
    Answer,
    GenerationOptions,
    Pages,
    Source,
    Timings,
)
from .errors import BundleError, IndexStoreError, InputError
from .page_inputs import PageReader, is_qdrant, open_index

__all__ = [
    "FEATURES_COMPUTED",
    "FEATURES_INDEX",
    "FEATURES_PREFIX_CACHE",
    "Answer",
    "Asker",
    "GenerationOptions",
    "Pages",
    "Source",
    "Timings",
    "ask",
    "require_bundle",
]


def require_bundle(path: Path, kind: str, flag: str) -> Path:
    from .vlm.bundle import MANIFEST

    if not (path / MANIFEST).is_file():
        raise BundleError(
            f"no {kind} bundle at {path}: run `colrag models install`, or "
            f"`colrag models export {kind} SRC --out {path}` (or pass {flag} DIR)"
        )
    return path


class Asker:
    """Loaded models + an index, answering questions. Use `Asker.open` (paths resolved like the CLI's)."""

    def __init__(
        self,
        generator=None,
        *,
        generator_bundle: Path | None = None,
        prefix_cache=None,
        retriever_bundle: Path | None = None,
        index_path: Path | str | None = None,
        threads: int | None = None,
        page_features: bool = True,
        max_pixels: int | None = None,
        password: str | None = None,
        keep_retriever: bool = False,
        load_s: float = 0.0,
        backend: str | None = None,
        precision: str | None = None,
    ):
        """generator: a loaded Generator, or None to load the one at generator_bundle when the first
        answer needs it (after retrieval, whose model is freed first unless keep_retriever)."""
        from .vlm.bundle import load_manifest

        self._generator = generator
        self.generator_bundle = generator_bundle
        self._prefix_cache = prefix_cache
        if generator is None and generator_bundle is None:
            raise ValueError("give a loaded generator or its bundle folder")
        manifest = (
            generator.manifest if generator is not None else load_manifest(Path(str(generator_bundle)), "generator")
        )
        self._gen_vision_hash = manifest.get("vision_hash")
        self._gen_hidden_size = int(manifest["hidden_size"])
        self._gen_max_pixels = int(manifest["max_pixels"])
        self.retriever_bundle = retriever_bundle
        self.index_path = index_path
        self.threads = threads
        self.page_features = page_features
        self.max_pixels = max_pixels
        self.password = password
        self.keep_retriever = keep_retriever  # a resident Asker (serve, -i) keeps the retriever loaded
        self.load_s = load_s
        self.backend, self.precision = backend, precision  # colrag.vlm.backends: onnxruntime / openvino, f32 / bf16
        # loading(what) -> a context around each model load; the CLI shows "loading the generator…" with it
        self.loading: Callable[[str], AbstractContextManager[Any]] = lambda what: nullcontext()
        self._retriever: Any = None

    @classmethod
    def open(
        cls,
        *,
        models_dir: str | os.PathLike | None = None,
        index: str | os.PathLike | None = None,
        retriever: str | os.PathLike | None = None,
        generator: str | os.PathLike | None = None,
        threads: int | None = None,
        cache: bool = True,
        page_features: bool = True,
        max_pixels: int | None = None,
        password: str | None = None,
        keep_retriever: bool = False,
        backend: str | None = None,
        precision: str | None = None,
    ) -> Asker:
        """Check the bundles; the models load when a question first needs them (the retriever
        for retrieval, then the generator).

        cache: keep the page prefixes under $COLRAG_HOME/cache/prefixes across processes."""
        from .paths import generator_dir, index_dir, prefix_cache_dir, retriever_dir
        from .store.qdrant import is_qdrant_spec
        from .vlm.prefix_cache import PrefixCache

        gen_bundle = require_bundle(generator_dir(generator, models_dir), "generator", "--generator")
        return cls(
            None,
            generator_bundle=gen_bundle,
            prefix_cache=PrefixCache(folder=prefix_cache_dir()) if cache else False,
            retriever_bundle=retriever_dir(retriever, models_dir),
            index_path=index if is_qdrant_spec(index) else index_dir(index),  # type: ignore[arg-type]
            threads=threads,
            page_features=page_features,
            max_pixels=max_pixels,
            password=password,
            keep_retriever=keep_retriever,
            backend=backend,
            precision=precision,
        )

    @property
    def generator(self):
        """The Generator, loaded on first use."""
        if self._generator is None:
            from .vlm.generator import Generator

            t0 = time.perf_counter()
            with self.loading("the generator"):
                self._generator = Generator.load(
                    Path(str(self.generator_bundle)),
                    threads=self.threads,
                    prefix_cache=self._prefix_cache,
                    backend=self.backend,
                    precision=self.precision,
                )
            self.load_s += time.perf_counter() - t0
        return self._generator

    def runtimes(self) -> dict[str, str | None]:
        """What each step of the generator runs on, as "backend version precision"
        ({"vision": None, "prefill": "openvino 2026.4.1 bf16", "decode": "onnxruntime 1.32.0 f32"});
        None: a graph the answers did not need, so not loaded (the vision tower, with page features)."""
        from .vlm.backends import runtime_version

        g = self._generator
        if g is None:
            return {}
        sessions = {"vision": g._vision_session, "prefill": g._prefill, "decode": g._decoder}
        return {
            step: None if s is None else f"{s.backend} {runtime_version(s.backend)} {s.precision}"
            for step, s in sessions.items()
        }

    def close(self) -> None:
        self._retriever = None

    def __enter__(self) -> Asker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the whole answer ------------------------------------------------------------
    def ask(self, question: str, *, pages: int = 1, images: Sequence | None = None, **options: Any) -> Answer:
        """Retrieve, read and answer in one call (options: GenerationOptions' fields)."""
        prepared = self.prepare(question, pages=pages, images=images)
        answer = Answer()
        for _ in self.stream(question, prepared, answer, **options):
            pass
        return answer

    def prepare(self, question: str, *, pages: int = 1, images: Sequence | None = None) -> Pages:
        """The pages to show: the index's top `pages` for the question, or the given image files."""
        if images:
            from .vlm.preprocess import check_image_file

            for path in images:
                check_image_file(Path(path))  # missing, malformed or too large: said now, before the model loads
            cap = self._reader().cap(None)
            return Pages(list(images), [FEATURES_COMPUTED] * len(images), max_pixels=cap)
        if pages < 1:
            raise InputError(f"--pages must be >= 1, got {pages}")
        with self._open_index() as idx:
            if not (idx.has_pages() if is_qdrant(idx) else idx.snapshot().pages):
                raise IndexStoreError(f"index {self.index_path} has no pages yet: run `colrag index DIR` first")
            t0 = time.perf_counter()
            hits = self._search(idx, question, pages)
            retrieve_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            prepared = self._reader().page_inputs(idx, hits)
            prepared.retrieve_s = retrieve_s
            prepared.pages_s = time.perf_counter() - t0
        return prepared

    def stream(self, question: str, prepared: Pages, answer: Answer, **options: Any) -> Iterator[str]:
        """Yield the answer's text as it is generated; `answer` holds text, sources and timings at the end."""
        from .vlm.generator import Generation

        opts = GenerationOptions(**options)
        result = Generation()
        start = time.perf_counter()
        first: float | None = None
        pieces = []
        for piece in self.generator.stream(
            question, images=prepared.inputs, result=result, max_pixels=prepared.max_pixels, **opts.as_kwargs()
        ):
            if first is None:
                first = time.perf_counter() - start
            pieces.append(piece)
            yield piece
        if first is None:  # no visible text (e.g. eos first): the prefill still produced one token
            first = result.vision_s + result.prefill_s
        kinds = [FEATURES_PREFIX_CACHE] * len(prepared.kinds) if result.prefix_cached else prepared.kinds
        answer.text = result.text
        answer.token_ids = list(result.token_ids)
        answer.finish_reason = result.finish_reason
        answer.n_prompt_tokens = result.n_prompt_tokens
        answer.prefix_cached = result.prefix_cached
        answer.sources = [
            Source(h.file, h.page, float(h.score), kind)
            for h, kind in zip(prepared.hits, kinds[: len(prepared.hits)], strict=True)  # --image: no hits
        ]
        answer.notes = list(prepared.notes)
        answer.runtimes = self.runtimes()
        answer.timings = Timings(
            retrieve_s=prepared.retrieve_s,
            vision_s=prepared.pages_s + result.vision_s,
            prefill_s=result.prefill_s,
            first_token_s=prepared.retrieve_s + prepared.pages_s + (result.vision_s + result.prefill_s),
            decode_s=result.decode_s,
            new_tokens=result.n_new_tokens,
            load_s=self.load_s,
        )

    # -- steps -----------------------------------------------------------------------
    def _search(self, idx, question: str, n_pages: int):
        from .search import Searcher
        from .store import RetrieverInfo
        from .store.manifest import check_no_retriever, check_retriever

        check_no_retriever(idx.path, idx.manifest)  # an index of precomputed vectors: said before a model loads
        model = self.load_retriever()
        check_retriever(idx.path, idx.manifest, RetrieverInfo.of(model))
        if is_qdrant(idx):  # docs/SCALE.md: ranked by Qdrant
            hits = idx.search_text(question, model, n_pages)
        else:
            hits = Searcher(idx, model, threads=self.threads).search(question, n_pages)
        if not self.keep_retriever:
            self._retriever = None
            del model
            gc.collect()  # the generator needs the memory more
        return hits

    def load_retriever(self):
        if self._retriever is None:
            from .vlm.retriever import Retriever

            t0 = time.perf_counter()
            if self.retriever_bundle is None:
                raise InputError("no retriever bundle given")
            bundle = require_bundle(Path(self.retriever_bundle), "retriever", "--retriever")
            if self.threads:
                import faiss

                faiss.omp_set_num_threads(self.threads)
            with self.loading("the retriever"):
                self._retriever = Retriever.load(
                    bundle, threads=self.threads, backend=self.backend, precision=self.precision
                )
            self.load_s += time.perf_counter() - t0
        return self._retriever

    def _reader(self) -> PageReader:
        """How this Asker turns pages into generator inputs (colrag.page_inputs)."""
        return PageReader(
            self._gen_vision_hash,
            self._gen_hidden_size,
            self._gen_max_pixels,
            page_features=self.page_features,
            max_pixels=self.max_pixels,
            password=self.password,
        )

    def _index(self) -> Path | str:
        if self.index_path is None:
            raise InputError("no index given")
        return self.index_path if isinstance(self.index_path, str) else Path(self.index_path)

    def _open_index(self) -> Any:
        """The local Index (read-only), or a Qdrant index's catalog (docs/SCALE.md)."""
        return open_index(self._index())

    def page_images(self, hits) -> list:
        """The hits' pages as the generator would be shown them when computed (for `ask --show`)."""
        reader = self._reader()
        with self._open_index() as idx:
            return [reader.render(idx, hit) for hit in hits]


def ask(question: str, *, pages: int = 1, **kwargs: Any) -> Answer:
    """One question, models loaded and freed: colrag.ask.ask("What does the chart show?")."""
    gen_keys = set(GenerationOptions.__dataclass_fields__)
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in gen_keys}
    with Asker.open(**kwargs) as asker:
        answer = asker.ask(question, pages=pages, **options)
    answer.timings.load_s = asker.load_s
    return answer
