"""Search equals brute-force MaxSim over the stored (SQ8, decoded) vectors; the FAISS candidate
stage (coarse quantizer + page lists) keeps the top pages; results do not depend on threads."""

from __future__ import annotations

import numpy as np
import pytest

from colrag.errors import IndexStoreError, InputError
from colrag.indexer import Indexer
from colrag.scoring import maxsim
from colrag.search import Searcher
from colrag.store import Index, RetrieverInfo, coarse
from tests.index_helpers import FakeRetriever, clustered_rows, make_pdf

QUERIES = ["revenue by region", "chart of energy use", "page 2", "a blue box", "zz"]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    for i in range(6):
        make_pdf(root / "docs" / f"doc{i}.pdf", 4, f"doc{i}")
    retriever = FakeRetriever()
    saved = coarse.MIN_ROWS
    coarse.MIN_ROWS = 200  # centroids after a few pages, so the candidate stage can be forced
    try:
        with Index.open_writer(root / "ix", RetrieverInfo.of(retriever)) as index:
            report = Indexer(index, retriever).run([root / "docs"])
            index.writer.refresh_lists(force=True)
            assert index.snapshot().coarse is not None and index.page_lists(index.snapshot()) is not None
    finally:
        coarse.MIN_ROWS = saved
    assert report.ok and report.pages == 24
    return root / "ix", retriever


def brute_force(index: Index, retriever, query: str):
    snap = index.snapshot()
    q = retriever.embed_queries([query])
    scores = maxsim(q, [np.asarray(index.page_vectors(snap, p), dtype=np.float32) for p in snap.pages])[0]
    ranked = sorted(zip(snap.pages, scores, strict=True), key=lambda t: (-t[1], t[0].path, t[0].page_no))
    return [(p.path, p.page_no, float(s)) for p, s in ranked]


@pytest.mark.parametrize("query", QUERIES)
def test_search_equals_brute_force(small_index, query):
    path, retriever = small_index
    with Index.open(path) as index:
        hits = Searcher(index, retriever).search(query, top_k=24)
        expected = brute_force(index, retriever, query)
    assert [(h.file, h.page, h.score) for h in hits] == expected


@pytest.mark.parametrize("query", QUERIES)
def test_centroid_stage_reranks_exactly(small_index, query):
    """The fake's queries are random vectors, near-tied against every page (no test of recall:
    see the clustered test below): candidates are reranked by exact MaxSim."""
    path, retriever = small_index
    with Index.open(path) as index:
        expected = brute_force(index, retriever, query)
        exact = {(f, p): s for f, p, s in expected}
        everything = Searcher(index, retriever, exact_all_pages=0, nprobe=4, candidates=24).search(query, top_k=24)
        assert [(h.file, h.page) for h in everything] == [(f, p) for f, p, _ in expected]
        searcher = Searcher(index, retriever, exact_all_pages=0, nprobe=4, candidates=8)
        assert len(searcher.candidates(retriever.embed_queries([query])[0], 3)) == 8
        hits = searcher.search(query, top_k=3)
    for h in hits:
        assert h.score == pytest.approx(exact[(h.file, h.page)], rel=1e-5, abs=1e-5)  # decode applied after the product


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_centroid_stage_recall_on_clustered_pages(tmp_path, monkeypatch):
    """Pages of clustered tokens, queries made of one page's noisy tokens: the FAISS candidate stage
    returns the exact top 5 (scores equal to brute force over the decoded vectors) for nearly every query,
    and every returned page is within 1 % of the exact 5th score (tie-tolerant recall)."""
    monkeypatch.setattr(coarse, "MIN_ROWS", 24000)  # trained on all 300 pages
    retriever = FakeRetriever()
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as index:
        for d in range(10):
            doc = index.begin_document(f"/d{d}.pdf", 1, 1, f"s{d}", 30)
            index.add_pages(doc, [(i + 1, 10, 10, clustered_rows(80, seed=d * 100 + i, n_dirs=256)) for i in range(30)])
            index.finish_document(doc)
        index.writer.refresh_lists(force=True)
    rng = np.random.default_rng(0)
    with Index.open(tmp_path / "ix") as index:
        snap = index.snapshot()
        searcher = Searcher(index, retriever, exact_all_pages=0, nprobe=8, candidates=30)
        found = tolerant = 0
        for _ in range(20):
            page = snap.pages[rng.integers(len(snap.pages))]
            rows = index.page_vectors(snap, page)[rng.choice(page.n_tokens, 20, replace=False)]
            q = rows + 0.05 * rng.standard_normal(rows.shape).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            hits = searcher.search_vectors(q, top_k=5)
            assert (hits[0].file, hits[0].page) == (page.path, page.page_no)
            exact = maxsim([q], [index.page_vectors(snap, p) for p in snap.pages])[0]
            top = {(snap.pages[i].path, snap.pages[i].page_no): exact[i] for i in np.argsort(-exact)[:5]}
            fifth = np.sort(exact)[-5]
            tolerant += sum(h.score >= 0.99 * fifth for h in hits)
            for h in hits:  # a page found has its exact score
                if (h.file, h.page) in top:
                    found += 1
                    assert h.score == pytest.approx(top[(h.file, h.page)], rel=1e-5, abs=1e-5)
        assert found >= 0.95 * 100  # recall@5
        assert tolerant >= 0.99 * 100  # tie-tolerant recall@5


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_tie_tolerant_recall_on_topic_mixtures_against_float32(tmp_path, monkeypatch):
    """The harder clustered set (bench_search.py's `clustered` corpus, scaled down): pages mix 2-4 of
    32 topics, queries are drawn from one page's topics (noisy concepts, not copies of its tokens), so
    many pages are near-tied. Through the FAISS path (coarse quantizer, page lists, SQ8 rerank) with
    candidates = a tenth of the pages, tie-tolerant recall@5 against exact float32 MaxSim over the
    original (unquantized) vectors is >= 0.99: a returned page counts when its exact score is >= the
    exact 5th minus 1 %."""
    rng = np.random.default_rng(3)
    n_topics, per_topic, n_pages, tokens = 32, 8, 400, 100
    concepts = _unit(
        _unit(rng.standard_normal((n_topics, 1, 128))) + 0.9 * _unit(rng.standard_normal((n_topics, per_topic, 128)))
    )
    pages, topics = [], []
    for _ in range(n_pages):
        k = int(rng.integers(2, 5))
        t = rng.choice(n_topics, size=k, replace=False)
        centres = _unit(concepts[t] + 0.05 * rng.standard_normal((k, per_topic, 128)))
        which = rng.choice(k, size=tokens, p=rng.dirichlet(np.ones(k)))
        pages.append(
            _unit(centres[which, rng.integers(0, per_topic, tokens)] + 0.06 * rng.standard_normal((tokens, 128)))
        )
        topics.append(t)
    monkeypatch.setattr(coarse, "MIN_ROWS", n_pages * tokens)  # trained on every page: 512 centroids
    with Index.open_writer(tmp_path / "ix", RetrieverInfo("t", "t", 128, 1)) as index:
        for first in range(0, n_pages, 50):
            doc = index.begin_document(f"/d{first:03d}.pdf", 1, 1, f"s{first}", 50)
            index.add_pages(doc, [(i + 1, 10, 10, pages[first + i]) for i in range(50)])
            index.finish_document(doc)
        index.writer.refresh_lists(force=True)
    with Index.open(tmp_path / "ix") as index:
        snap = index.snapshot()
        assert snap.coarse is not None and snap.coarse["n_centroids"] == 512
        number = {(p.path, p.page_no): int(p.path[2:5]) + p.page_no - 1 for p in snap.pages}
        searcher = Searcher(index, None, exact_all_pages=0, candidates=n_pages // 10)
        tolerant = strict = ties = 0
        n_queries = 40
        for _ in range(n_queries):
            t = topics[rng.integers(n_pages)]
            c = concepts[t[rng.integers(0, len(t), 20)], rng.integers(0, per_topic, 20)]
            q = _unit(c + 0.08 * rng.standard_normal((20, 128)))
            exact = maxsim([q], pages)[0]  # float32, the original vectors
            fifth = np.sort(exact)[-5]
            ties += int((exact >= 0.99 * fifth).sum())
            got = [number[(h.file, h.page)] for h in searcher.search_vectors(q, 5)]
            assert len(searcher.candidates(q, 5)) == n_pages // 10  # the FAISS path, not every page
            tolerant += sum(exact[g] >= 0.99 * fifth for g in got)
            strict += len(set(got) & set(np.argsort(-exact)[:5].tolist()))
    assert ties > 5 * n_queries  # near ties exist: the test is not trivially easy
    assert tolerant >= 0.99 * 5 * n_queries
    assert strict >= 0.9 * 5 * n_queries


def test_candidate_count_grows_with_the_index_beyond_the_measured_sizes(small_index, monkeypatch):
    from colrag import search

    assert search.candidates_for(10) == search.candidates_for(100_000) == 256  # measured: 256 holds to 100k
    sizes = [search.candidates_for(n) for n in (100_001, 300_000, 10**6, 10**8)]
    assert sizes == sorted(sizes) and sizes[1] > 256 and sizes[-1] == search.MAX_CANDIDATES
    assert all(n % search.BLOCK_PAGES == 0 for n in sizes)
    path, retriever = small_index  # 24 pages: the rule, scaled down, is what a default Searcher uses
    monkeypatch.setattr(search, "CANDIDATES", 4)
    monkeypatch.setattr(search, "CANDIDATES_FLAT_PAGES", 6)
    monkeypatch.setattr(search, "BLOCK_PAGES", 4)
    assert search.candidates_for(24) == 8
    with Index.open(path) as index:
        q = retriever.embed_queries(["revenue"])[0]
        assert len(Searcher(index, retriever, exact_all_pages=0, nprobe=4).candidates(q, 3)) == 8
        assert len(Searcher(index, retriever, exact_all_pages=0, nprobe=4, candidates=5).candidates(q, 3)) == 5


def test_each_page_finds_itself(small_index):
    """A page's own vectors as the query: that page ranks first (as colpali's tests check)."""
    path, retriever = small_index
    with Index.open(path) as index:
        snap = index.snapshot()
        searcher = Searcher(index, retriever, exact_all_pages=0, nprobe=2, candidates=5)
        for page in snap.pages[::5]:
            q = np.asarray(index.page_vectors(snap, page), dtype=np.float32)
            (best,) = searcher.search_vectors(q, top_k=1)
            assert (best.file, best.page) == (page.path, page.page_no)


def test_empty_index_and_bad_arguments(tmp_path):
    retriever = FakeRetriever()
    with (
        Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as index,
        pytest.raises(IndexStoreError, match="colrag index DIR"),
    ):
        Searcher(index, retriever).search("anything")
    with Index.open(tmp_path / "ix") as index, pytest.raises(InputError):
        Searcher(index, retriever).search("   ")


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_indexer_keeps_the_page_lists_current(tmp_path, monkeypatch):
    monkeypatch.setattr(coarse, "MIN_ROWS", 50)
    monkeypatch.setattr("colrag.search.EXACT_ALL_PAGES", 0)  # lists are kept for indexes above this
    retriever = FakeRetriever()
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 3, "a")
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as index:
        Indexer(index, retriever).run([docs])
        lists = index.page_lists(index.snapshot())
        assert lists is not None and lists.generation == index.generation()
        make_pdf(docs / "b.pdf", 2, "b")
        Indexer(index, retriever).run([docs])
        snap = index.snapshot()
        index.writer.refresh_lists(force=True)
        lists = index.page_lists(index.snapshot())
        assert lists.generation == snap.generation and set(lists.all_page_ids().tolist()) == {p.id for p in snap.pages}
    with Index.open(tmp_path / "ix") as index:
        hits = Searcher(index, retriever, exact_all_pages=0, candidates=2).search("b page 2", top_k=5)
        assert [(h.file, h.page) for h in hits] == [
            (h.file, h.page) for h in Searcher(index, retriever).search("b page 2", top_k=5)
        ]


def test_reader_with_stale_lists_sees_new_and_removed_pages(tmp_path, monkeypatch):
    """Pages removed since the lists were saved are filtered out at search time; pages added since are candidates."""
    monkeypatch.setattr(coarse, "MIN_ROWS", 500)
    retriever = FakeRetriever()
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as index:
        for d in range(4):
            doc = index.begin_document(f"/d{d}.pdf", 1, 1, f"s{d}", 5)
            index.add_pages(doc, [(i + 1, 10, 10, clustered_rows(60, seed=d * 10 + i, n_dirs=32)) for i in range(5)])
            index.finish_document(doc)
        index.writer.refresh_lists(force=True)
        new = clustered_rows(60, seed=999, n_dirs=32)
        doc = index.begin_document("/new.pdf", 1, 1, "n", 1)
        index.add_pages(doc, [(1, 10, 10, new)])
        index.finish_document(doc)
        index.remove_documents(["/d0.pdf"])
    with Index.open(tmp_path / "ix") as index:
        snap = index.snapshot()
        assert index.page_lists(snap).generation < snap.generation  # stale
        searcher = Searcher(index, retriever, exact_all_pages=0, candidates=3)
        hits = searcher.search_vectors(index.page_vectors(snap, snap.pages[-1]), top_k=20)
        assert (hits[0].file, hits[0].page) == ("/new.pdf", 1)
        assert "/d0.pdf" not in {h.file for h in hits}


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_do_not_depend_on_the_thread_count(small_index, threads):
    path, retriever = small_index
    with Index.open(path) as index:
        base = [Searcher(index, retriever, exact_all_pages=0, candidates=16, threads=1).search(q, 10) for q in QUERIES]
        got = [
            Searcher(index, retriever, exact_all_pages=0, candidates=16, threads=threads).search(q, 10) for q in QUERIES
        ]
    assert got == base


def test_search_prefetches_the_pages_it_reranks(small_index, monkeypatch):
    from colrag.store.segments import SegmentReader

    path, retriever = small_index
    asked = []
    real = SegmentReader.willneed

    def spy(self, name, committed_rows, spans):
        asked.extend((name, first, n) for first, n in spans)
        real(self, name, committed_rows, spans)  # the real madvise runs too: it must not fail

    monkeypatch.setattr(SegmentReader, "willneed", spy)
    with Index.open(path) as index:
        searcher = Searcher(index, retriever, exact_all_pages=0, nprobe=4, candidates=8)
        q = retriever.embed_queries(["revenue by region"])[0]
        snap = index.snapshot()
        want = sorted((snap.segments[p.segment_id][0], p.row_offset, p.n_tokens) for p in searcher.candidates(q, 3))
        searcher.search_vectors(q, 3)
    assert len(want) == 8 and sorted(asked) == want


def test_search_workers_follow_omp_num_threads(monkeypatch):
    from colrag.search import MAX_SEARCH_WORKERS, search_workers

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert search_workers() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert search_workers() == MAX_SEARCH_WORKERS
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= search_workers() <= MAX_SEARCH_WORKERS


def test_pages_of_a_document_in_progress_when_the_lists_were_saved_are_found(tmp_path, monkeypatch):
    """Lists saved while a document is still being indexed hold its pages too (page ids only grow:
    everything up to the lists' largest id is on them), so finishing it needs no rebuild."""
    monkeypatch.setattr(coarse, "MIN_ROWS", 300)
    retriever = FakeRetriever()
    with Index.open_writer(tmp_path / "ix", RetrieverInfo.of(retriever)) as index:
        for d in range(3):
            doc = index.begin_document(f"/d{d}.pdf", 1, 1, f"s{d}", 4)
            index.add_pages(doc, [(i + 1, 10, 10, clustered_rows(60, seed=d * 10 + i, n_dirs=32)) for i in range(4)])
            if d < 2:
                index.finish_document(doc)
        index.writer.refresh_lists(force=True)  # /d2.pdf is not visible yet
        doc3 = index.begin_document("/d3.pdf", 1, 1, "s3", 1)
        index.add_pages(doc3, [(1, 10, 10, clustered_rows(60, seed=77, n_dirs=32))])
        index.finish_document(doc3)
        index.finish_document(doc)
        index.remove_documents(["/d0.pdf"])
    with Index.open(tmp_path / "ix") as reader:
        snap = reader.snapshot()
        assert reader.page_lists(snap).generation < snap.generation
        searcher = Searcher(reader, retriever, exact_all_pages=0, candidates=2)
        for page in snap.pages:
            (best,) = searcher.search_vectors(reader.page_vectors(snap, page), top_k=1)
            assert (best.file, best.page) == (page.path, page.page_no)
        assert "/d0.pdf" not in {p.path for p in searcher.candidates(reader.page_vectors(snap, snap.pages[0]), 5)}
