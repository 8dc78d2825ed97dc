"""`colrag index`, `search`, `status`, `remove` and `ask` straight on a Qdrant index (issue 17):
the catalog as document points (colrag.store.qdrant.catalog), page features beside an Edge
shard (colrag.store.qdrant.features), `colrag.open_index("qdrant+edge:...")`.

Qdrant Edge is the real engine, embedded; the server path runs against qdrant-client's local
mode (a Python re-implementation of the API, not a real server). Skipped unless the `qdrant`
extra is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.index_helpers import FakeRetriever, make_pdf

pytest.importorskip("qdrant_edge")

ROOT = Path(__file__).resolve().parents[1]


def run_colrag(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "colrag", *args], capture_output=True, text=True, env=env, timeout=300)


def fp16_maxsim(q: np.ndarray, page: np.ndarray) -> float:
    q16 = q.astype(np.float16).astype(np.float32)
    return float((q16 @ page.astype(np.float16).astype(np.float32).T).max(axis=1).sum())


def test_cli_index_search_status_remove_on_edge(tmp_path, tiny_retriever_bundle):
    """`colrag index --index qdrant+edge:PATH` is incremental like a local index; search ranks by
    MaxSim over the retriever's vectors; status, remove and the page features follow."""
    from colrag.render import RenderOptions, open_pdf, render_page
    from colrag.vlm.retriever import Retriever

    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 3, "alpha")
    make_pdf(docs / "b.pdf", 2, "beta")
    spec = f"qdrant+edge:{tmp_path / 'q'}"
    bundle = ["--retriever", str(tiny_retriever_bundle), "--threads", "1"]
    first = run_colrag("index", str(docs), "--index", spec, *bundle, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["run"]["pages"] == 5

    # search: Qdrant's ranking equals MaxSim of the same retriever's vectors (float16 storage)
    found = run_colrag("search", "alpha page 2", "--index", spec, "--json", *bundle)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["results"]
    model = Retriever.load(tiny_retriever_bundle, threads=1)
    (q,) = model.embed_queries(["alpha page 2"])
    exact = {}
    for name, n in (("a.pdf", 3), ("b.pdf", 2)):
        with open_pdf(docs / name) as doc:
            for p in range(1, n + 1):
                (v,) = model.embed_images([render_page(doc, p - 1, RenderOptions()).image])
                exact[(str(docs / name), p)] = fp16_maxsim(q, v)
    order = sorted(exact, key=lambda key: (-exact[key], key))
    assert [(h["file"], h["page"]) for h in hits] == order
    np.testing.assert_allclose([h["score"] for h in hits], [exact[k] for k in order], rtol=1e-4)

    status = json.loads(run_colrag("status", "--index", spec, "--json").stdout)
    assert status["index"]["documents"] == 2 and status["index"]["pages"] == 5
    assert (status["index"]["failed_documents"], status["index"]["documents_indexing"]) == (0, 0)
    assert status["index"]["pages_with_features"] == 5 and status["index"]["feature_bytes"] > 0
    assert len(list((tmp_path / "q" / "features").glob("*.feat"))) == 5

    again = run_colrag("index", str(docs), "--index", spec, *bundle)  # nothing changed: nothing embedded
    assert again.returncode == 0 and "0 pages from 0 files indexed, 2 unchanged" in again.stdout, again.stdout

    make_pdf(docs / "b.pdf", 3, "beta v2")  # changed: re-indexed; a.pdf gone: dropped
    (docs / "a.pdf").unlink()
    third = run_colrag("index", str(docs), "--index", spec, *bundle)
    assert third.returncode == 0 and "3 pages from 1 file indexed, 0 unchanged, 1 removed" in third.stdout, third.stdout
    status = json.loads(run_colrag("status", "--index", spec, "--json").stdout)
    assert (status["index"]["documents"], status["index"]["pages"], status["index"]["pages_with_features"]) == (1, 3, 3)

    removed = run_colrag("remove", str(docs / "b.pdf"), "--index", spec)
    assert removed.returncode == 0 and removed.stdout.strip() == f"removed {docs / 'b.pdf'}"
    status = json.loads(run_colrag("status", "--index", spec, "--json").stdout)
    assert (status["index"]["documents"], status["index"]["pages"], status["index"]["pages_with_features"]) == (0, 0, 0)

    bad = run_colrag("index", str(docs), "--index", "qdrant:db:6333/x", *bundle)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "qdrant:http://HOST:6333/COLLECTION" in bad.stderr


class Interrupting(FakeRetriever):
    """Raises KeyboardInterrupt (a Ctrl-C) at its `stop_at`-th page."""

    stop_at = 0

    def embed_images(self, images):
        if self.stop_at and self.calls + 1 == self.stop_at:
            raise KeyboardInterrupt
        return super().embed_images(images)


def _build(spec: str, docs: Path, model, *, client=None):
    from colrag.indexer import Indexer
    from colrag.store import RetrieverInfo
    from colrag.store.qdrant.catalog import open_catalog

    with open_catalog(spec, RetrieverInfo.of(model), client=client) as ix:
        return Indexer(ix, model, commit_pages=1).run([docs])


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_interrupted_document_is_hidden_then_resumed(tmp_path):
    """Pages of a document being indexed are committed but not searchable until it is done; the
    next run resumes at the first page not committed and the index equals an uninterrupted one."""
    from colrag.store.qdrant import open_qdrant
    from colrag.store.qdrant.catalog import open_catalog

    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2, "a")
    make_pdf(docs / "b.pdf", 4, "b")
    spec = f"qdrant+edge:{tmp_path / 'q'}"
    model = Interrupting()
    model.stop_at = 5  # a.pdf's 2 pages, then b.pdf's pages 1-2 committed, Ctrl-C on its 3rd
    with pytest.raises(KeyboardInterrupt):
        _build(spec, docs, model)
    query = FakeRetriever().embed_queries(["b page 1"])[0]
    with open_catalog(spec, None, create=False) as ix:
        assert ix.stats()["documents_in_progress"] == 1
        assert {p for f, p in ix.ix.pages() if f.endswith("b.pdf")} == {1, 2}  # committed ...
        assert {h.file for h in ix.ix.search(query, k=10)} == {str(docs / "a.pdf")}  # ... but not searchable
    model.stop_at, model.calls = 0, 0
    report = _build(spec, docs, model)
    assert report.ok and report.pages == 2 and model.calls == 2  # only b.pdf's pages 3 and 4
    _build(f"qdrant+edge:{tmp_path / 'ref'}", docs, FakeRetriever())
    with open_qdrant(spec, create=False) as a, open_qdrant(f"qdrant+edge:{tmp_path / 'ref'}", create=False) as b:
        assert a.pages() == b.pages() and len(a.pages()) == 6
        for f, p in sorted(a.pages()):
            np.testing.assert_array_equal(a.page_vectors(f, p), b.page_vectors(f, p))
        assert [(h.file, h.page, h.score) for h in a.search(query, k=6)] == [
            (h.file, h.page, h.score) for h in b.search(query, k=6)
        ]


def _interrupted_reindex(tmp_path, backend: str):
    """a.pdf indexed (2 pages), then changed (3 other pages) and its re-indexing stopped by a Ctrl-C
    after 2 new pages were committed. Returns (spec, client, a.pdf, old bytes, old vectors)."""
    from colrag.store.qdrant import open_qdrant

    client = None
    spec = f"qdrant+edge:{tmp_path / 'q'}"
    if backend == "server":
        qdrant_client = pytest.importorskip("qdrant_client")
        client, spec = qdrant_client.QdrantClient(":memory:"), "qdrant:http://localhost:6333/reports"
    docs = tmp_path / "docs"
    a = make_pdf(docs / "a.pdf", 2, "old")
    old_bytes = a.read_bytes()
    assert _build(spec, docs, FakeRetriever(), client=client).pages == 2
    with open_qdrant(spec, create=False, client=client) as ix:
        old = {p: ix.page_vectors(str(a), p) for p in (1, 2)}
    make_pdf(docs / "a.pdf", 3, "new")
    model = Interrupting()
    model.stop_at = 3  # the new version's pages 1-2 committed, Ctrl-C on its 3rd
    with pytest.raises(KeyboardInterrupt):
        _build(spec, docs, model, client=client)
    return spec, client, a, old_bytes, old


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_a_changed_file_keeps_its_old_version_searchable_until_the_new_one_is_done(tmp_path, backend):
    """Like a local index: re-indexing a changed file writes the new version beside the old one
    (another generation); search, page_vectors and lookup see the old version until the new is
    done; the resumed run embeds only the missing page and the old pages are gone after it."""
    from colrag.store.qdrant import open_qdrant
    from colrag.store.qdrant.catalog import open_catalog

    spec, client, a, _, old = _interrupted_reindex(tmp_path, backend)
    query = FakeRetriever().embed_queries(["old page 1"])[0]
    with open_catalog(spec, None, create=False, client=client) as cat:
        current, indexing = cat.lookup(str(a))
        assert current is not None and indexing is not None and current.id != indexing.id
        assert (current.status, current.n_pages, indexing.n_pages) == ("done", 2, 3)
        assert current.sha256 != indexing.sha256
        assert sorted((h.file, h.page) for h in cat.ix.search(query, k=10)) == [(str(a), 1), (str(a), 2)]
        for p in (1, 2):
            np.testing.assert_array_equal(cat.ix.page_vectors(str(a), p), old[p])
        assert cat.stored_page_numbers(indexing.id) == {1, 2}  # of the new version only
    model = Interrupting()
    report = _build(spec, a.parent, model, client=client)
    assert report.ok and report.pages == 1 and model.calls == 1  # resumed at the new version's page 3
    ref = FakeRetriever()
    with open_qdrant(spec, create=False, client=client) as ix:
        assert ix.pages() == {(str(a), 1), (str(a), 2), (str(a), 3)} and ix.engine.count_pages() == 3
        for p in (1, 2, 3):
            new_page = ix.page_vectors(str(a), p)
            assert new_page is not None and new_page.shape[1] == ref.dim
        assert not np.array_equal(ix.page_vectors(str(a), 1), old[1])
    with open_catalog(spec, None, create=False, client=client) as cat:
        current, indexing = cat.lookup(str(a))
        assert indexing is None and current is not None and (current.status, current.n_pages) == ("done", 3)


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_a_file_changed_back_during_an_unfinished_reindex_keeps_its_pages(tmp_path, backend):
    """The file is back to the indexed version after an interrupted re-indexing: the partial new
    pages go, the old version's pages and facts stay, nothing is embedded again."""
    from colrag.store.qdrant import open_qdrant
    from colrag.store.qdrant.catalog import open_catalog

    spec, client, a, old_bytes, old = _interrupted_reindex(tmp_path, backend)
    a.write_bytes(old_bytes)
    model = Interrupting()
    report = _build(spec, a.parent, model, client=client)
    assert report.ok and report.pages == 0 and report.skipped_files == 1 and model.calls == 0
    with open_qdrant(spec, create=False, client=client) as ix:
        assert ix.engine.count_pages() == 2
        for p in (1, 2):
            np.testing.assert_array_equal(ix.page_vectors(str(a), p), old[p])
    with open_catalog(spec, None, create=False, client=client) as cat:
        current, indexing = cat.lookup(str(a))
        assert indexing is None and current is not None and (current.status, current.n_pages) == ("done", 2)


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_failures_and_known_failures_on_edge(tmp_path):
    """A file that cannot be read is recorded as a failed document: skipped while unchanged."""
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 1, "a")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    spec = f"qdrant+edge:{tmp_path / 'q'}"
    first = _build(spec, docs, FakeRetriever())
    assert [f.path for f in first.new_failures] == [str(docs / "broken.pdf")] and first.pages == 1
    second = _build(spec, docs, FakeRetriever())
    assert second.ok and [f.previous for f in second.failures] == [True] and second.skipped_files == 1
    status = run_colrag("status", "--index", spec)
    assert status.returncode == 0 and f"failed     {docs / 'broken.pdf'}" in status.stdout
    doc = json.loads(run_colrag("status", "--index", spec, "--json").stdout)
    assert doc["index"]["failed_documents"] == 1 and doc["failures"][0]["file"] == str(docs / "broken.pdf")


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_indexer_on_a_server_collection(tmp_path):
    """The same catalog through qdrant-client (its local mode): index, skip unchanged, search, remove."""
    pytest.importorskip("qdrant_client")
    from qdrant_client import QdrantClient

    from colrag.store.qdrant.catalog import open_catalog

    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2, "a")
    make_pdf(docs / "b.pdf", 1, "b")
    client = QdrantClient(":memory:")
    spec = "qdrant:http://localhost:6333/reports"
    first = _build(spec, docs, FakeRetriever(), client=client)
    assert first.ok and first.pages == 3
    again = _build(spec, docs, FakeRetriever(), client=client)
    assert again.pages == 0 and again.skipped_files == 2
    with open_catalog(spec, None, create=False, client=client) as ix:
        assert not ix.keeps_features and ix.features is None
        hits = ix.ix.search(FakeRetriever().embed_queries(["a page 1"])[0], k=5)
        a, b = str(docs / "a.pdf"), str(docs / "b.pdf")
        assert sorted((h.file, h.page) for h in hits) == [(a, 1), (a, 2), (b, 1)]
        assert ix.remove_documents([str(docs / "a.pdf")]) == 1
        assert [d.path for d in ix.documents()] == [str(docs / "b.pdf")] and len(ix.ix.pages()) == 1


def test_edge_features_round_trip_and_refusals(tmp_path):
    from colrag.store.features import FeaturesUnavailable
    from colrag.store.qdrant.features import EdgeFeatures
    from colrag.vlm.image_features import ImageFeatures

    info = {"vision_hash": "v1", "hidden_size": 16, "encoding": "float16"}
    store = EdgeFeatures(tmp_path, info)
    embeds = np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32)
    store.write("/d/a.pdf", 2, "sha-a", ImageFeatures(embeds, np.array([1, 4, 6]), "v1"))
    got = store.read("/d/a.pdf", 2, "sha-a")
    np.testing.assert_array_equal(got.embeds, embeds.astype(np.float16).astype(np.float32))
    assert got.grid_thw.tolist() == [1, 4, 6] and got.vision_hash == "v1"
    with pytest.raises(FeaturesUnavailable, match="stale"):
        store.read("/d/a.pdf", 2, "sha-other")  # the file changed since
    with pytest.raises(FeaturesUnavailable, match="stale"):
        EdgeFeatures(tmp_path, {**info, "vision_hash": "v2"}).read("/d/a.pdf", 2, "sha-a")
    with pytest.raises(FeaturesUnavailable, match="no stored features"):
        store.read("/d/a.pdf", 3, "sha-a")
    (path,) = (tmp_path / "features").glob("*.feat")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(FeaturesUnavailable, match="corrupt"):
        store.read("/d/a.pdf", 2, "sha-a")
    path.write_bytes(bytes(raw[:-3]))
    with pytest.raises(FeaturesUnavailable, match="truncated"):
        store.read("/d/a.pdf", 2, "sha-a")
    (tmp_path / "features" / "notes.txt").write_text("not colrag's")
    assert store.sweep(keep=set()) == 1 and (tmp_path / "features" / "notes.txt").exists()


def test_open_index_api_on_edge(tmp_path):
    """colrag.open_index takes a Qdrant spec: the same add_page / commit / search / remove_file."""
    import colrag

    rng = np.random.default_rng(1)
    pages = {("/d/a.pdf", p): rng.standard_normal((7, 128)).astype(np.float32) for p in (1, 2, 3)}
    with colrag.open_index(f"qdrant+edge:{tmp_path / 'q'}") as ix:
        for (f, p), v in pages.items():
            ix.add_page(f, p, v)
        ix.commit()
        q = rng.standard_normal((4, 128)).astype(np.float32)
        hits = ix.search(q, k=3)
        exact = {k: fp16_maxsim(q, v) for k, v in pages.items()}
        assert [(h.file, h.page) for h in hits] == sorted(exact, key=lambda k: (-exact[k], k))
        ix.remove_file("/d/a.pdf")
        ix.commit()
        assert ix.pages() == set()
    from colrag.errors import IndexStoreError

    with pytest.raises(IndexStoreError, match="no index"):
        colrag.open_index(f"qdrant+edge:{tmp_path / 'none'}", create=False)


def test_ask_on_edge_uses_the_stored_features(tmp_path, tiny_retriever_bundle, tiny_shared_generator_bundle):
    """`ask` on a Qdrant Edge index: features from the folder beside the shard give the tokens of
    the fresh path (render + vision tower); damaged ones are computed, and said once."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from colrag.ask import Asker
    from colrag.indexer import Indexer
    from colrag.store import RetrieverInfo
    from colrag.store.qdrant.catalog import open_catalog
    from colrag.vlm.retriever import Retriever

    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2, "chart")
    make_pdf(docs / "b.pdf", 1, "table")
    spec = f"qdrant+edge:{tmp_path / 'q'}"
    model = Retriever.load(tiny_retriever_bundle, threads=1)
    with open_catalog(spec, RetrieverInfo.of(model)) as ix:
        assert Indexer(ix, model).run([docs]).pages == 3

    def ask(use: bool):
        with Asker.open(
            index=spec,
            retriever=tiny_retriever_bundle,
            generator=tiny_shared_generator_bundle,
            threads=1,
            cache=False,
            page_features=use,
        ) as asker:
            return asker.ask("What does the chart show?", pages=2, max_new_tokens=12)

    stored, fresh = ask(True), ask(False)
    assert [s.features for s in stored.sources] == ["index"] * 2 and not stored.notes
    assert [s.features for s in fresh.sources] == ["computed"] * 2
    assert [(s.file, s.page) for s in stored.sources] == [(s.file, s.page) for s in fresh.sources]
    assert len(set(fresh.token_ids)) >= 3 and stored.token_ids == fresh.token_ids
    for path in (tmp_path / "q" / "features").glob("*.feat"):
        raw = bytearray(path.read_bytes())
        raw[-2] ^= 0xFF
        path.write_bytes(bytes(raw))
    damaged = ask(True)
    assert [s.features for s in damaged.sources] == ["computed"] * 2 and damaged.token_ids == fresh.token_ids
    assert len(damaged.notes) == 1 and "corrupt" in damaged.notes[0]

    # the CLI on the same index; on a terminal, stderr says which model is loading (issue 14)
    import pty

    master, slave = pty.openpty()
    args = ["ask", "What does the chart show?", "--index", spec, "--top-k", "1", "--max-new-tokens", "4"]
    args += ["--retriever", str(tiny_retriever_bundle), "--generator", str(tiny_shared_generator_bundle)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "colrag", *args, "--threads", "1", "--no-cache", "--json"],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    stdout, _ = proc.communicate(timeout=300)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    terminal = b"".join(chunks).decode()
    assert proc.returncode == 0, terminal
    assert json.loads(stdout)["sources"][0]["features"] == "computed"  # the features damaged above
    assert "note: page features from the index not used" in terminal
    assert "loading the retriever…" in terminal and "loading the generator…" in terminal
    piped = run_colrag(*args, "--threads", "1", "--no-cache", "--json")
    assert piped.returncode == 0 and "loading" not in piped.stderr


KILLED_RUN = """
import sys
sys.path.insert(0, {root!r})
from colrag.indexer import Indexer
from colrag.store import RetrieverInfo
from colrag.store.qdrant.catalog import open_catalog
from tests.index_helpers import FakeRetriever

class Progress:
    def start(self, total, files): pass
    def advance(self, pages, label): print(label, flush=True)
    def finish(self): pass

model = FakeRetriever(slow=0.4)
with open_catalog({spec!r}, RetrieverInfo.of(model)) as ix:
    Indexer(ix, model, commit_pages=1, progress=Progress()).run([{docs!r}])
"""


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_kill_9_during_colrag_index_into_edge_then_resume(tmp_path):
    """A writer killed with SIGKILL mid-document leaves an Edge index that opens, shows only finished
    documents to search, and that the next run completes to the index of an uninterrupted run."""
    import signal

    from colrag.store.qdrant import open_qdrant
    from colrag.store.qdrant.catalog import open_catalog

    docs = tmp_path / "docs"
    for name in ("a", "b", "c"):
        make_pdf(docs / f"{name}.pdf", 4, name)
    spec = f"qdrant+edge:{tmp_path / 'q'}"
    code = KILLED_RUN.format(root=str(ROOT), spec=spec, docs=str(docs))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for _ in range(6):  # a.pdf done, b.pdf half way
        assert proc.stdout.readline(), "the writer ended early"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    query = FakeRetriever().embed_queries(["b page 1"])[0]
    with open_catalog(spec, None, create=False) as ix:
        docs_now = {d.path: d.status for d in ix.documents()}
        assert docs_now[str(docs / "a.pdf")] == "done" and docs_now[str(docs / "b.pdf")] == "indexing"
        assert {h.file for h in ix.ix.search(query, k=20)} == {str(docs / "a.pdf")}
    report = _build(spec, docs, FakeRetriever())
    assert report.ok and 0 < report.pages < 12
    _build(f"qdrant+edge:{tmp_path / 'ref'}", docs, FakeRetriever())
    with open_qdrant(spec, create=False) as a, open_qdrant(f"qdrant+edge:{tmp_path / 'ref'}", create=False) as b:
        assert a.pages() == b.pages() and len(a.pages()) == 12
        for f, p in sorted(a.pages()):
            np.testing.assert_array_equal(a.page_vectors(f, p), b.page_vectors(f, p))
        assert [(h.file, h.page) for h in a.search(query, k=12)] == [(h.file, h.page) for h in b.search(query, k=12)]
