"""Search equals brute-force MaxSim; the FAISS candidate stage keeps the top pages."""

from __future__ import annotations

import numpy as np
import pytest

from colrag.errors import IndexStoreError, InputError
from colrag.indexer import Indexer
from colrag.scoring import maxsim
from colrag.search import Searcher
from colrag.store import Index, RetrieverInfo
from tests.index_helpers import FakeRetriever, make_pdf

QUERIES = ["revenue by region", "chart of energy use", "page 2", "a blue box", "zz"]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    for i in range(6):
        make_pdf(root / "docs" / f"doc{i}.pdf", 4, f"doc{i}")
    retriever = FakeRetriever()
    with Index.open_writer(root / "ix", RetrieverInfo.of(retriever)) as index:
        report = Indexer(index, retriever).run([root / "docs"])
    assert report.ok and report.pages == 24
    return root / "ix", retriever


def brute_force(index: Index, retriever, query: str):
    snap = index.snapshot()
    q = retriever.embed_queries([query])
    scores = maxsim(q, [np.asarray(index.page_vectors(snap, p), dtype=np.float32) for p in snap.pages])[0]
    ranked = sorted(zip(snap.pages, scores), key=lambda t: (-t[1], t[0].path, t[0].page_no))
    return [(p.path, p.page_no, float(s)) for p, s in ranked]


@pytest.mark.parametrize("query", QUERIES)
def test_search_equals_brute_force(small_index, query):
    path, retriever = small_index
    with Index.open(path) as index:
        hits = Searcher(index, retriever).search(query, top_k=24)
        expected = brute_force(index, retriever, query)
    assert [(h.file, h.page, h.score) for h in hits] == expected


@pytest.mark.parametrize("query", QUERIES)
def test_faiss_candidates_keep_the_top_pages(small_index, query):
    path, retriever = small_index
    with Index.open(path) as index:
        # force the FAISS path on a small index, with few token hits per query token
        searcher = Searcher(index, retriever, exact_all_pages=0, token_hits=4, min_candidates=8, max_rerank=8)
        hits = searcher.search(query, top_k=3)
        expected = brute_force(index, retriever, query)[:3]
    assert [(h.file, h.page) for h in hits] == [(f, p) for f, p, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, _, s in expected], abs=0)


def test_each_page_finds_itself(small_index):
    """A page's own vectors as the query: that page ranks first (as colpali's tests check)."""
    path, retriever = small_index
    with Index.open(path) as index:
        snap = index.snapshot()
        searcher = Searcher(index, retriever, exact_all_pages=0, token_hits=2, min_candidates=1, max_rerank=5)
        for page in snap.pages[::5]:
            q = np.asarray(index.page_vectors(snap, page), dtype=np.float32)
            (best,) = searcher.search_vectors(q, top_k=1)
            assert (best.file, best.page) == (page.path, page.page_no)


def test_empty_index_and_bad_arguments(tmp_path):
    retriever = FakeRetriever()
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as index:
        with pytest.raises(IndexStoreError, match="colrag index DIR"):
            Searcher(index, retriever).search("anything")
    with Index.open(tmp_path / "ix") as index:
        with pytest.raises(InputError):
            Searcher(index, retriever).search("   ")


def test_indexer_keeps_the_faiss_cache_current(tmp_path):
    from colrag.store import ann

    retriever = FakeRetriever()
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 3, "a")
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as index:
        Indexer(index, retriever, ann_min_pages=0).run([docs])
        cached = ann.load(index)
        assert cached is not None and cached.generation == index.generation()
        make_pdf(docs / "b.pdf", 2, "b")
        Indexer(index, retriever, ann_min_pages=0).run([docs])
        cached = ann.load(index)
        snap = index.snapshot()
        assert cached.generation == snap.generation and set(cached.token_pages.tolist()) == {p.id for p in snap.pages}
        Indexer(index, retriever).run([docs])  # small again by the default threshold: no cache kept
        assert ann.load(index) is None
    with Index.open(tmp_path / "ix") as index:
        hits = Searcher(index, retriever, exact_all_pages=0, min_candidates=2).search("b page 2", top_k=5)
        assert [(h.file, h.page) for h in hits] == [(h.file, h.page) for h in Searcher(index, retriever).search("b page 2", top_k=5)]
