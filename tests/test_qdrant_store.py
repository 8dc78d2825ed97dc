"""The Qdrant backend (colrag.store.qdrant): the store behaviours of the local index on Qdrant
Edge (the real engine, embedded), and the server backend's requests against qdrant-client's
local mode.

qdrant-client's local mode (QdrantClient(":memory:")) is a Python re-implementation, not the
Qdrant server: the server tests check that colrag's collection config and requests are
well-formed and give the right pages; they are not a test against a real Qdrant server.
Skipped unless the `qdrant` extra is installed (`pip install 'colrag[qdrant]'`; CI installs it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from colrag.errors import IndexStoreError, InputError
from colrag.store import qdrant as qd
from colrag.store.qdrant import index as qd_index
from colrag.store.qdrant.server import ServerEngine
from tests.index_helpers import clustered_rows

ROOT = Path(__file__).resolve().parents[1]


def unit_rows(n: int, seed: int, dim: int = 128) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fp16_maxsim(q: np.ndarray, pages: list[np.ndarray]) -> np.ndarray:
    """MaxSim as Qdrant computes it on float16 storage: query and vectors rounded to float16, float32 sums."""
    q16 = q.astype(np.float16).astype(np.float32)
    return np.array(
        [(q16 @ p.astype(np.float16).astype(np.float32).T).max(axis=1).sum() for p in pages], dtype=np.float32
    )


def small_corpus() -> dict[tuple[str, int], np.ndarray]:
    return {(f"/docs/r{i % 4}.pdf", i // 4 + 1): unit_rows(5 + i % 17, seed=i) for i in range(48)}


def edge(tmp_path: Path, name: str = "ix", **kw) -> qd.QdrantIndex:
    pytest.importorskip("qdrant_edge")
    return qd.open_qdrant(f"qdrant+edge:{tmp_path / name}", **kw)


def test_spec_parsing():
    assert qd.parse_spec("qdrant+edge:/data/ix") == ("edge", "/data/ix", None)
    assert qd.parse_spec("qdrant:http://db.example:6333/reports") == ("server", "http://db.example:6333", "reports")
    assert qd.parse_spec("qdrant:https://db:6333/a_b-c/") == ("server", "https://db:6333", "a_b-c")
    for bad in (
        "qdrant:db:6333/x",
        "qdrant:http://db:6333",
        "qdrant:http://db:6333/a/b",
        "qdrant:http://db/a b",
        "qdrant+edge:",
    ):
        with pytest.raises(InputError):
            qd.parse_spec(bad)
    assert (
        qd.is_qdrant_spec("qdrant+edge:x") and not qd.is_qdrant_spec("indexes/default") and not qd.is_qdrant_spec(None)
    )


def test_point_ids_are_deterministic_per_page():
    assert qd.point_id("/a.pdf", 3) == qd.point_id("/a.pdf", 3)
    assert len({qd.point_id("/a.pdf", 3), qd.point_id("/a.pdf", 4), qd.point_id("/b.pdf", 3)}) == 3


def test_pool_tokens_summarises_a_page_deterministically():
    rows = clustered_rows(200, seed=3, n_dirs=32)
    pooled = qd.pool_tokens(rows)
    assert pooled.shape == (qd.POOLED_VECTORS, 128) and pooled.dtype == np.float32
    np.testing.assert_array_equal(pooled, qd.pool_tokens(rows))
    # each of the page's 6 topic directions (tests.index_helpers.clustered_rows) has a centroid on it
    dirs = np.random.default_rng(12345).standard_normal((32, 128)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    topics = np.random.default_rng(3).choice(32, size=6, replace=False)
    cos = dirs[topics] @ (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).T  # (6, 32)
    assert cos.max(axis=1).min() > 0.9
    assert (dirs @ (rows.mean(0) / np.linalg.norm(rows.mean(0)))).max() < 0.8  # a single mean vector is on none
    small = rows[:10]
    assert qd.pool_tokens(small) is small


def test_without_the_extras_nothing_imports_qdrant():
    code = (
        "import sys, colrag, colrag.store.qdrant, colrag.cli, colrag.search, colrag.indexer, colrag.ray_pages\n"
        "import colrag.cli.index_cmd, colrag.cli.search_cmd, colrag.cli.status_cmd, colrag.cli.scale_cmd\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qdrant_edge', 'qdrant_client', 'ray')]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_missing_package_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "qdrant_edge", None)
    with pytest.raises(IndexStoreError, match=r"pip install 'colrag\[qdrant\]'"):
        qd.open_qdrant(f"qdrant+edge:{tmp_path / 'ix'}")


def test_edge_search_equals_brute_force_and_remove(tmp_path):
    corpus = small_corpus()
    keys = list(corpus)
    with edge(tmp_path) as ix:
        for (file, page), vecs in corpus.items():
            ix.add_page(file, page, vecs)
        ix.commit()
        for seed in range(5):
            q = unit_rows(9, seed=1000 + seed)
            hits = ix.search(q, k=6)
            exact = fp16_maxsim(q, [corpus[k] for k in keys])
            order = sorted(range(len(keys)), key=lambda i: (-exact[i], keys[i]))[:6]
            assert [(h.file, h.page) for h in hits] == [keys[i] for i in order]
            np.testing.assert_allclose([h.score for h in hits], exact[order], rtol=1e-5)
        stored = ix.page_vectors("/docs/r1.pdf", 2)
        np.testing.assert_array_equal(stored, corpus[("/docs/r1.pdf", 2)].astype(np.float16).astype(np.float32))
        ix.remove_file("/docs/r1.pdf")
        assert ("/docs/r1.pdf", 1) in ix.pages()  # not before the commit
        ix.commit()
        assert {f for f, _ in ix.pages()} == {"/docs/r0.pdf", "/docs/r2.pdf", "/docs/r3.pdf"}
        hits = ix.search(unit_rows(9, seed=7), k=48)
        assert len(hits) == 36 and all(h.file != "/docs/r1.pdf" for h in hits)
        stats = ix.stats()
        assert stats["pages"] == 36 and stats["documents"] == 3 and stats["bytes_on_disk"] > 0


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_edge_resume_after_reopen(tmp_path):
    corpus = small_corpus()
    items = list(corpus.items())
    with edge(tmp_path, retriever={"bundle_id": "b1", "name": "m"}) as ix:
        for (file, page), vecs in items[:20]:
            ix.add_page(file, page, vecs)
        ix.commit()
        for (file, page), vecs in items[20:30]:
            ix.add_page(file, page, vecs)  # never committed: dropped by close()
    with edge(tmp_path, create=False, retriever={"bundle_id": "b1", "name": "m"}) as ix:
        assert ix.dim == 128 and ix.pages() == {k for k, _ in items[:20]}
        for (file, page), vecs in items[10:]:  # a resumed run may write a committed page again
            ix.add_page(file, page, vecs)
        ix.commit()
        assert ix.pages() == set(corpus) and ix.stats()["pages"] == len(corpus)
        with pytest.raises(InputError, match="64-d vectors"):
            ix.add_page("/x.pdf", 1, unit_rows(3, 1, dim=64))
    with pytest.raises(IndexStoreError, match="built with retriever"):
        edge(tmp_path, retriever={"bundle_id": "other", "name": "m2"})
    with pytest.raises(IndexStoreError, match="holds 128-d"):
        edge(tmp_path, dim=64)


def test_edge_refuses_missing_foreign_and_concurrent(tmp_path):
    with pytest.raises(IndexStoreError, match="no index"):
        edge(tmp_path, "nothing", create=False)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(IndexStoreError, match="not a colrag index"):
        edge(tmp_path, "photos")
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"x"
    with edge(tmp_path) as ix:
        ix.add_page("/a.pdf", 1, unit_rows(4, 0))
        ix.commit()
        with pytest.raises(IndexStoreError, match="one process at a time"):
            edge(tmp_path)
    with edge(tmp_path) as ix:  # released on close
        assert len(ix.pages()) == 1
    with pytest.raises(InputError), edge(tmp_path) as ix:
        ix.add_page("/a.pdf", 2, np.full((3, 128), np.nan, dtype=np.float32))


def clustered_pages(n: int) -> dict[tuple[str, int], np.ndarray]:
    return {(f"/c/doc{i // 50}.pdf", i % 50 + 1): clustered_rows(60, seed=i, n_dirs=32) for i in range(n)}


def test_edge_tie_tolerant_recall_through_the_candidate_stage(tmp_path):
    """A clustered set (pages mix 6 of 32 topics), searched through pooled-vector prefetch
    (HNSW) + MaxSim with fewer candidates than pages: tie-tolerant recall@5 >= 0.99."""
    corpus = clustered_pages(300)
    keys = list(corpus)
    rng = np.random.default_rng(5)
    with edge(tmp_path) as ix:
        for (file, page), vecs in corpus.items():
            ix.add_page(file, page, vecs)
        ix.commit()
        ix.optimize()
        ix.exact_all_pages, ix.candidates = 0, 60
        found = []
        for t in rng.choice(len(keys), size=20, replace=False):
            rows = corpus[keys[t]][rng.choice(60, size=12, replace=False)]
            q = rows + 0.05 * rng.standard_normal(rows.shape).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            exact = fp16_maxsim(q, [corpus[k] for k in keys])
            kth = np.sort(exact)[::-1][4]
            hits = ix.search(q, 5)
            assert len(hits) == 5
            found += [exact[keys.index((h.file, h.page))] >= kth - 0.01 * abs(kth) for h in hits]
            for h in hits:  # the reported score is the MaxSim over the stored vectors
                assert h.score == pytest.approx(float(exact[keys.index((h.file, h.page))]), rel=1e-5)
    assert np.mean(found) >= 0.99


WRITER = """
import sys, numpy as np
from colrag.store.qdrant import open_qdrant
def rows(i):
    x = np.random.default_rng(i).standard_normal((8 + i % 5, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
ix = open_qdrant("qdrant+edge:" + sys.argv[1])
for i in range(10000):
    ix.add_page(f"/f{i // 10}.pdf", i % 10 + 1, rows(i))
    if i % 2 == 1:
        ix.commit()
        print("committed", i + 1, flush=True)
"""


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_edge_kill_9_during_writes_leaves_it_usable(tmp_path):
    pytest.importorskip("qdrant_edge")
    folder = tmp_path / "ix"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    committed = 0
    try:
        deadline = time.monotonic() + 120
        while committed < 30 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            committed = int(line.split()[1])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert committed >= 30

    def rows(i: int) -> np.ndarray:
        x = np.random.default_rng(i).standard_normal((8 + i % 5, 128)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    with qd.open_qdrant(f"qdrant+edge:{folder}", create=False) as ix:
        have = ix.pages()
        numbers = sorted((int(f[2:-4]) * 10 + p - 1) for f, p in have)
        assert numbers[:committed] == list(range(committed))  # every committed page is there
        assert numbers == list(range(len(numbers)))  # and pages past them only in commit order
        for n in numbers[:: max(1, len(numbers) // 8)]:  # whole pages, exactly as written
            np.testing.assert_array_equal(
                ix.page_vectors(f"/f{n // 10}.pdf", n % 10 + 1), rows(n).astype(np.float16).astype(np.float32)
            )
        ix.add_page("/after.pdf", 1, rows(99999))
        ix.commit()
        assert ix.search(rows(99999), 1)[0].file == "/after.pdf"


# -- the server backend, against qdrant-client's local mode (not a real server) ---------


class Spy:
    """Records the calls colrag makes on a QdrantClient."""

    def __init__(self, client):
        self.client = client
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, name):
        fn = getattr(self.client, name)

        def call(*args, **kwargs):
            self.calls.append((name, kwargs))
            return fn(*args, **kwargs)

        return call


def server(client=None, collection: str = "reports") -> qd.QdrantIndex:
    qc = pytest.importorskip("qdrant_client")
    return qd.open_qdrant(
        f"qdrant:http://qdrant.invalid:6333/{collection}", client=client or qc.QdrantClient(":memory:")
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_server_collection_config_and_requests():
    qc = pytest.importorskip("qdrant_client")
    m = qc.models
    spy = Spy(qc.QdrantClient(":memory:"))
    corpus = clustered_pages(120)
    keys = list(corpus)
    with server(spy) as ix:
        for (file, page), vecs in corpus.items():
            ix.add_page(file, page, vecs)
        ix.commit()
        info = spy.client.get_collection("reports")
        tokens, pooled = info.config.params.vectors[qd.TOKENS], info.config.params.vectors[qd.POOLED]
        for v in (tokens, pooled):
            assert v.size == 128 and v.distance == m.Distance.DOT and v.datatype == m.Datatype.FLOAT16
            assert v.multivector_config.comparator == m.MultiVectorComparator.MAX_SIM
        assert tokens.hnsw_config.m == 0 and pooled.hnsw_config.m == qd.HNSW_M
        upserts = [kw for name, kw in spy.calls if name == "upsert"]
        assert all(kw["wait"] for kw in upserts) and max(len(kw.get("points", [])) for kw in upserts) <= qd.COMMIT_BATCH
        q = corpus[keys[17]][:10]
        spy.calls.clear()
        exact_hits = ix.search(q, 5)  # 120 pages: every page scored
        ((_, kw),) = [c for c in spy.calls if c[0] == "query_points"]
        assert kw["using"] == qd.TOKENS and kw["search_params"].exact and "prefetch" not in kw
        ix.exact_all_pages, ix.candidates = 0, 40
        spy.calls.clear()
        hits = ix.search(q, 5)
        ((_, kw),) = [c for c in spy.calls if c[0] == "query_points"]
        (pre,) = kw["prefetch"]
        assert pre.using == qd.POOLED and pre.limit == 40 and kw["using"] == qd.TOKENS and kw["limit"] == 5
        assert (hits[0].file, hits[0].page) == (exact_hits[0].file, exact_hits[0].page) == keys[17]
        exact = [float((q @ corpus[(h.file, h.page)].T).max(axis=1).sum()) for h in exact_hits]
        np.testing.assert_allclose([h.score for h in exact_hits], exact, rtol=1e-3)  # local mode keeps float32
        ix.remove_file("/c/doc0.pdf")
        ix.commit()
        assert len(ix.pages()) == 70 and {f for f, _ in ix.pages()} == {"/c/doc1.pdf", "/c/doc2.pdf"}
    client = qc.QdrantClient(":memory:")
    client.create_collection("other", vectors_config=m.VectorParams(size=4, distance=m.Distance.DOT))
    with server(client, "other") as ix:  # an empty collection is adopted, but only with colrag's vectors
        ix.add_page("/a.pdf", 1, unit_rows(3, 0))
        with pytest.raises(IndexStoreError, match="exists without a 128-d multivector 'tokens'"):
            ix.commit()
    client.upsert("other", [m.PointStruct(id=1, vector=[0.0, 0.0, 0.0, 1.0])])
    with pytest.raises(IndexStoreError, match="not a colrag index"):
        server(client, "other")
    ServerEngine(client, "", "made")._create_collection(128)  # made beforehand (e.g. with shards, replicas)
    with server(client, "made") as ix:
        ix.add_page("/a.pdf", 1, unit_rows(3, 0))
        ix.commit()
        assert ix.pages() == {("/a.pdf", 1)} and ix.manifest["format"] == qd.FORMAT
    with pytest.raises(IndexStoreError, match="no index"):
        qd.open_qdrant("qdrant:http://qdrant.invalid:6333/none", create=False, client=qc.QdrantClient(":memory:"))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_server_reopen_keeps_manifest(tmp_path):
    qc = pytest.importorskip("qdrant_client")
    client = qc.QdrantClient(path=str(tmp_path / "local"))
    with server(client) as ix:
        ix.add_page("/a.pdf", 1, unit_rows(6, 1))
        ix.commit()
    client.close()  # a client passed in is the caller's to close
    client = qc.QdrantClient(path=str(tmp_path / "local"))
    with qd.open_qdrant("qdrant:http://qdrant.invalid:6333/reports", create=False, client=client) as ix:
        assert ix.dim == 128 and ix.manifest["format"] == qd.FORMAT and ix.pages() == {("/a.pdf", 1)}


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_copy_local_index_into_edge_is_resumable(tmp_path, monkeypatch):
    pytest.importorskip("qdrant_edge")
    from colrag.store import Index, RetrieverInfo
    from tests.index_helpers import FakeRetriever

    info = RetrieverInfo.of(FakeRetriever())
    with Index.open_writer(tmp_path / "local", info) as index:
        for d in range(3):
            doc = index.begin_document(f"/docs/{d}.pdf", 1, 1, f"sha{d}", 4)
            index.add_pages(doc, [(p, 10, 10, clustered_rows(20, seed=d * 10 + p)) for p in range(1, 5)])
            index.finish_document(doc)
    target = f"qdrant+edge:{tmp_path / 'q'}"
    monkeypatch.setattr(qd_index, "COMMIT_BATCH", 5)
    real_add = qd.QdrantIndex.add_page
    calls = []

    def dying_add(self, file, page, vectors):  # the copy is interrupted at the 8th page
        calls.append((file, page))
        if len(calls) == 8:
            raise KeyboardInterrupt
        real_add(self, file, page, vectors)

    monkeypatch.setattr(qd.QdrantIndex, "add_page", dying_add)
    with pytest.raises(KeyboardInterrupt):
        qd.copy_local_index(tmp_path / "local", target)
    monkeypatch.setattr(qd.QdrantIndex, "add_page", real_add)
    with qd.open_qdrant(target, create=False) as ix:
        assert len(ix.pages()) == 5  # the first commit (5 pages) landed
    counts = qd.copy_local_index(tmp_path / "local", target)
    assert counts == {"pages": 12, "copied": 7, "skipped": 5}
    with Index.open(tmp_path / "local") as src, qd.open_qdrant(target, create=False) as ix:
        snap = src.snapshot()
        assert ix.pages() == {(p.path, p.page_no) for p in snap.pages}
        assert ix.manifest["retriever"] == {"bundle_id": info.bundle_id, "name": info.name}
        for p in snap.pages:  # the stored (int8, dequantized) vectors, as float16
            expected = src.page_vectors(snap, p).astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(ix.page_vectors(p.path, p.page_no), expected)
    assert qd.copy_local_index(tmp_path / "local", target)["copied"] == 0


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_export_index_command(tmp_path):
    """`colrag export-index --to qdrant+edge:PATH` from a local index, run twice (resumable, idempotent)."""
    pytest.importorskip("qdrant_edge")
    from colrag.store import Index, RetrieverInfo
    from tests.index_helpers import FakeRetriever

    with Index.open_writer(tmp_path / "local", RetrieverInfo.of(FakeRetriever())) as index:
        doc = index.begin_document("/docs/a.pdf", 1, 1, "sha", 3)
        index.add_pages(doc, [(p, 10, 10, clustered_rows(20, seed=p)) for p in range(1, 4)])
        index.finish_document(doc)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "colrag", "export-index", "--index", str(tmp_path / "local")]
    target = f"qdrant+edge:{tmp_path / 'q'}"
    done = subprocess.run([*cmd, "--to", target, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["copied"] == 3
    again = subprocess.run([*cmd, "--to", target], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and "0 pages copied, 3 already there" in again.stdout
    bad = subprocess.run([*cmd, "--to", "elsewhere"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "expected qdrant+edge:PATH" in bad.stderr


def test_cli_search_status_remove_on_an_exported_index(tmp_path, tiny_retriever_bundle):
    """A local index of real renders (tiny retriever), exported to Qdrant Edge: `colrag search`
    gives the same pages as on the local index; status and remove work; `colrag index` on the
    exported index finds every remaining file unchanged (export-index copies the catalog facts)."""
    pytest.importorskip("qdrant_edge")
    from tests.index_helpers import make_pdf

    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 3, "alpha")
    make_pdf(docs / "b.pdf", 2, "beta")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def colrag(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "colrag", *args], capture_output=True, text=True, env=env, timeout=300
        )

    local = str(tmp_path / "local")
    target = f"qdrant+edge:{tmp_path / 'q'}"
    bundle = ["--retriever", str(tiny_retriever_bundle), "--threads", "1"]
    assert colrag("index", str(docs), "--index", local, *bundle).returncode == 0
    assert colrag("export-index", "--index", local, "--to", target).returncode == 0
    here = colrag("search", "alpha page 2", "--index", local, "--json", *bundle)
    there = colrag("search", "alpha page 2", "--index", target, "--json", *bundle)
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    a, b = json.loads(here.stdout)["results"], json.loads(there.stdout)["results"]
    assert [(h["file"], h["page"]) for h in a] == [(h["file"], h["page"]) for h in b] and len(b) == 5
    np.testing.assert_allclose([h["score"] for h in b], [h["score"] for h in a], rtol=2e-3)  # float16 of int8 rows
    status = json.loads(colrag("status", "--index", target, "--json").stdout)
    assert status["index"]["pages"] == 5 and status["index"]["documents"] == 2 and status["retriever"]["bundle_id"]
    removed = colrag("remove", str(docs / "a.pdf"), "--index", target)
    assert removed.returncode == 0 and removed.stdout.strip() == f"removed {docs / 'a.pdf'}"
    assert json.loads(colrag("status", "--index", target, "--json").stdout)["index"]["pages"] == 2
    again = colrag("index", str(docs), "--index", target, *bundle)  # the export copied the catalog facts:
    assert again.returncode == 0, again.stderr  # b.pdf unchanged, a.pdf (removed above, still in docs/) indexed again
    assert "3 pages from 1 file indexed, 1 unchanged, 0 removed" in again.stdout, again.stdout
    assert not (tmp_path / "q" / "catalog.sqlite").exists()
