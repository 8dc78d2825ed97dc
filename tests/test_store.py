"""Index storage: manifest checks, visibility of commits, crash leftovers, integrity check, lock,
int8 vectors, the codebook and its codes, the centroid inverted file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from colrag.errors import IndexStoreError
from colrag.store import Index, RetrieverInfo
from colrag.scoring import maxsim
from colrag.store import ann
from colrag.store import codebook as cb
from colrag.store.index import MANIFEST_FILE
from colrag.store.vectors import SEGMENTS_DIR, dequantize, quantize
from tests.index_helpers import FakeRetriever, clustered_rows, make_pdf

INFO = RetrieverInfo.of(FakeRetriever())


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add_doc(index: Index, path: str, n_pages: int, seed: int = 0, finish: bool = True) -> int:
    doc = index.begin_document(path, 100, 1, f"sha-{path}-{seed}", n_pages)
    index.add_pages(doc, [(i + 1, 10, 20, unit_rows(5 + i, seed * 100 + i)) for i in range(n_pages)])
    if finish:
        index.finish_document(doc)
    return doc


def test_manifest_records_identity_and_refuses_other_retriever(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/a.pdf", 2)
    manifest = json.loads((tmp_path / "ix" / MANIFEST_FILE).read_text())
    assert manifest["retriever"] == {"bundle_id": INFO.bundle_id, "name": INFO.name}
    assert manifest["dim"] == 128 and manifest["max_pixels"] == INFO.max_pixels
    assert manifest["schema_version"] == 2 and manifest["vector_dtype"] == "int8"
    assert {"target_pixels", "max_side"} <= set(manifest["render"]) and "colrag_version" in manifest
    other = RetrieverInfo("another", "other-model", 128, INFO.max_pixels)
    with pytest.raises(IndexStoreError, match="built with retriever"):
        Index.open_writer(tmp_path / "ix", other)
    with pytest.raises(IndexStoreError, match="built with retriever"):
        Index.open(tmp_path / "ix", other)
    with Index.open(tmp_path / "ix", INFO) as index:
        assert len(index.snapshot().pages) == 2


def test_newer_schema_is_refused(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/a.pdf", 1)
    path = tmp_path / "ix" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(IndexStoreError, match="upgrade colrag"):
        Index.open(tmp_path / "ix")
    path.write_text(json.dumps(manifest))
    conn = sqlite3.connect(tmp_path / "ix" / "catalog.sqlite")
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(IndexStoreError, match="upgrade colrag"):
        Index.open(tmp_path / "ix")


def test_version_1_index_is_refused_with_reindex_hint(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/a.pdf", 1)
    path = tmp_path / "ix" / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 1, "vector_dtype": "float16"}))
    for opener in (lambda: Index.open(tmp_path / "ix"), lambda: Index.open_writer(tmp_path / "ix", INFO)):
        with pytest.raises(IndexStoreError, match="old schema version 1.*re-index"):
            opener()


def test_int8_rows_drift_from_fp32(tmp_path):
    """Stored int8 rows vs the fp32 input: per-element error, MaxSim error, ranking."""
    pages = [clustered_rows(200, seed=i, n_dirs=64) for i in range(40)]
    q8 = [quantize(p) for p in pages]
    deq = [dequantize(q) for q in q8]
    for p, q, d in zip(pages, q8, deq):
        assert q.dtype == np.int8 and (np.abs(q.astype(int)).max(axis=1) == 127).all()
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
        assert np.abs(d - p).max() < 4e-3  # half a quantization step of the largest coordinate, renormalised
    queries = [clustered_rows(25, seed=1000 + i, n_dirs=64) for i in range(10)]
    exact, approx = maxsim(queries, pages), maxsim(queries, deq)
    assert np.abs(approx - exact).max() < 5e-3 * 25  # < 0.005 per query token
    assert (np.argsort(-exact, axis=1)[:, :5] == np.argsort(-approx, axis=1)[:, :5]).mean() >= 0.9


def test_missing_index_and_foreign_folder(tmp_path):
    with pytest.raises(IndexStoreError, match="colrag index"):
        Index.open(tmp_path / "nothing")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(IndexStoreError, match="not a colrag index"):
        Index.open_writer(tmp_path / "photos", INFO)


def test_pages_are_visible_only_when_their_document_is_done(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        doc = add_doc(index, "/a.pdf", 3, finish=False)
        with Index.open(tmp_path / "ix") as reader:
            assert reader.snapshot().pages == []
            index.finish_document(doc)
            snap = reader.snapshot()
            assert [(p.path, p.page_no) for p in snap.pages] == [("/a.pdf", 1), ("/a.pdf", 2), ("/a.pdf", 3)]
            np.testing.assert_allclose(reader.page_vectors(snap, snap.pages[1]), unit_rows(6, 1), atol=4e-3)
        # a new version replaces the old one atomically
        add_doc(index, "/a.pdf", 1, seed=7)
        snap = index.snapshot()
        assert [(p.path, p.page_no) for p in snap.pages] == [("/a.pdf", 1)]
        assert index.stats()["dead_vector_bytes"] > 0
        assert index.check().ok


def test_reader_reuses_its_snapshot_until_the_generation_moves(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/a.pdf", 2)
        with Index.open(tmp_path / "ix") as reader:
            first = reader.snapshot()
            assert reader.snapshot() is first
            doc = add_doc(index, "/b.pdf", 1, finish=False)
            assert reader.snapshot() is first  # pages of an unfinished document are invisible anyway
            index.finish_document(doc)
            assert [p.path for p in reader.snapshot().pages] == ["/a.pdf", "/a.pdf", "/b.pdf"]
        assert index.snapshot() is not index.snapshot()  # a writer always reads afresh


def test_uncommitted_tail_is_ignored_then_truncated(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/a.pdf", 2)
    seg = next((tmp_path / "ix" / SEGMENTS_DIR).iterdir())
    committed = seg.stat().st_size
    with open(seg, "ab") as f:  # what a writer killed between append and commit leaves behind
        f.write(b"\x13" * 1000)
    (tmp_path / "ix" / SEGMENTS_DIR / "seg-000099.i8").write_bytes(b"\0" * 512)
    with Index.open(tmp_path / "ix") as reader:
        report = reader.check()
        assert report.ok and any("tail" in n for n in report.notes)
        assert len(reader.snapshot().pages) == 2
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        assert seg.stat().st_size == committed
        assert not (tmp_path / "ix" / SEGMENTS_DIR / "seg-000099.i8").exists()
        add_doc(index, "/b.pdf", 1)
        assert index.check().ok and not index.check().notes


def test_check_finds_damage(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/a.pdf", 2)
    seg = next((tmp_path / "ix" / SEGMENTS_DIR).iterdir())
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2])
    with Index.open(tmp_path / "ix") as reader:
        report = reader.check()
        assert not report.ok and "bytes" in report.problems[0]
    seg.write_bytes(b"\0" * len(data))  # right size, zeroed vectors
    with Index.open(tmp_path / "ix") as reader:
        assert any("unit vector" in p for p in reader.check().problems)


def test_second_writer_is_refused_with_pid(tmp_path):
    import os

    with Index.open_writer(tmp_path / "ix", INFO):
        with pytest.raises(IndexStoreError, match=rf"being written by another colrag process \(pid {os.getpid()}\)"):
            Index.open_writer(tmp_path / "ix", INFO)
        with Index.open(tmp_path / "ix") as reader:  # readers never wait
            assert reader.snapshot().pages == []
    with Index.open_writer(tmp_path / "ix", INFO):
        pass  # released on close


def test_remove_and_failure_rows(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/docs/a.pdf", 2)
        add_doc(index, "/docs/sub/b.pdf", 1)
        add_doc(index, "/other/c.pdf", 1)
        index.record_failure("/docs/bad.pdf", 0, 1, None, "empty file (0 bytes)")
        assert sorted(index.paths_under("/docs")) == ["/docs/a.pdf", "/docs/bad.pdf", "/docs/sub/b.pdf"]
        assert index.remove_documents(["/docs/sub/b.pdf", "/nope.pdf"]) == 1
        stats = index.stats()
        assert stats["documents"] == 2 and stats["pages"] == 3 and stats["failed_documents"] == 1
        assert stats["failed"] == [{"path": "/docs/bad.pdf", "error": "empty file (0 bytes)"}]


def add_clustered(index: Index, path: str, n_pages: int, seed: int, tokens: int = 60) -> int:
    doc = index.begin_document(path, 1, 1, f"sha-{path}-{seed}", n_pages)
    index.add_pages(doc, [(i + 1, 10, 10, clustered_rows(tokens, seed=seed * 1000 + i, n_dirs=32)) for i in range(n_pages)])
    index.finish_document(doc)
    return doc


def test_codebook_starts_with_backfilled_codes(tmp_path, monkeypatch):
    monkeypatch.setattr(cb, "CODEBOOK_MIN_ROWS", 1000)
    monkeypatch.setattr("colrag.store.vectors.SEGMENT_MAX_BYTES", 300 * 128)  # several segments
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_clustered(index, "/a.pdf", 10, seed=1)  # 600 rows: no codebook yet
        snap = index.snapshot()
        assert snap.codebook is None and not list((tmp_path / "ix" / SEGMENTS_DIR).glob("*.codes"))
        add_clustered(index, "/b.pdf", 10, seed=2)  # 1,200 rows: centroids trained, earlier rows coded
        add_clustered(index, "/c.pdf", 5, seed=3)
        snap = index.snapshot()
        book = index.codebook(snap)
        assert snap.codebook["coarse"] * snap.codebook["fine"] == book.n_centroids == cb.sizes(1200)[0] * cb.sizes(1200)[1]
        assert len(snap.segments) > 2 and index.check().ok
        for page in snap.pages:  # every row's code is its centroid under the tree assignment
            np.testing.assert_array_equal(index.page_codes(snap, page), book.assign(index.page_vectors(snap, page)))
        stats = index.stats()
        assert stats["vector_bytes"] == stats["tokens"] * (128 + 2) and stats["centroids"] == book.n_centroids


def test_failed_first_codebook_commit_leaves_no_codes(tmp_path, monkeypatch):
    monkeypatch.setattr(cb, "CODEBOOK_MIN_ROWS", 1000)
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_clustered(index, "/a.pdf", 10, seed=1)
        doc = index.begin_document("/b.pdf", 1, 1, "sha-b", 10)
        real = index.conn

        class Failing:  # the transaction recording the pages (and the codebook) fails
            def execute(self, sql, *args):
                if sql.startswith("INSERT OR REPLACE INTO meta"):
                    raise sqlite3.OperationalError("disk I/O error")
                return real.execute(sql, *args)

            def __getattr__(self, name):
                return getattr(real, name)

        index.conn = Failing()
        with pytest.raises(sqlite3.OperationalError):
            index.add_pages(doc, [(i + 1, 10, 10, clustered_rows(60, seed=50 + i, n_dirs=32)) for i in range(10)])
        index.conn = real
        folder = tmp_path / "ix" / SEGMENTS_DIR
        assert not list(folder.glob("*.codes")) and not (folder / cb.CODEBOOK_FILE).exists()
        assert index.snapshot().codebook is None and index.check().ok
        index.add_pages(doc, [(i + 1, 10, 10, clustered_rows(60, seed=50 + i, n_dirs=32)) for i in range(10)])
        index.finish_document(doc)
        assert index.snapshot().codebook is not None and index.check().ok


def test_uncommitted_codes_tail_is_truncated(tmp_path, monkeypatch):
    monkeypatch.setattr(cb, "CODEBOOK_MIN_ROWS", 500)
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_clustered(index, "/a.pdf", 10, seed=1)
    folder = tmp_path / "ix" / SEGMENTS_DIR
    (codes,) = folder.glob("*.codes")
    size = codes.stat().st_size
    with open(codes, "ab") as f:
        f.write(b"\xff" * 100)
    with Index.open(tmp_path / "ix") as reader:
        assert reader.check().ok
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        assert codes.stat().st_size == size == 600 * 2
        codes.write_bytes(codes.read_bytes()[:-2])
        assert any("codes" in p for p in index.check().problems)


def test_centroid_ivf_builds_saves_and_goes_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(cb, "CODEBOOK_MIN_ROWS", 500)
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        for d in range(4):
            add_clustered(index, f"/d{d}.pdf", 5, seed=d)
        snap = index.snapshot()
        ivf = ann.ensure(index, snap, save_to_disk=True)
        assert ivf.generation == snap.generation and ivf.page_ids.tolist() == [p.id for p in snap.pages]
        for pos, page in enumerate(snap.pages):  # each page is on the list of exactly its centroids
            have = {c for c in range(ivf.n_centroids) if pos in set(ivf.pages_of(c).tolist())}
            assert have == set(index.page_codes(snap, page).tolist())
        loaded = ann.load(index)
        assert loaded.generation == snap.generation
        np.testing.assert_array_equal(loaded.entries, ivf.entries)
        np.testing.assert_array_equal(loaded.offsets, ivf.offsets)
        add_clustered(index, "/d9.pdf", 2, seed=9)
        assert ann.load(index).generation < index.generation()  # stale until refreshed
        fresh = ann.ensure(index, index.snapshot(), save_to_disk=True)
        assert fresh.generation == index.generation() and len(fresh.page_ids) == 22
        assert [f.name for f in (tmp_path / "ix" / ann.ANN_DIR).iterdir()].count(ann.STATE_FILE) == 1
        assert len(list((tmp_path / "ix" / ann.ANN_DIR).iterdir())) == 4  # old generation's files deleted


def test_kill_9_while_writing_codes_then_resume(tmp_path):
    """The kill -9 test with a codebook: rows and codes become visible only with their commit."""
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 4, "a")
    make_pdf(docs / "b.pdf", 6, "b")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "tests.index_helpers", str(tmp_path / "ix"), str(docs), "--slow", "0.2", "--codebook-rows", "60"]
    proc = subprocess.Popen(cmd, cwd=env["PYTHONPATH"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if line.startswith("page ") and int(line.split()[1]) >= 7:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with Index.open(tmp_path / "ix") as index:
        report = index.check()
        assert report.ok, report.problems
        assert index.snapshot().codebook is not None  # a.pdf (4 x 24 rows) passed the threshold
    cmd = cmd[:-4] + ["--codebook-rows", "60"]
    done = subprocess.run(cmd, cwd=env["PYTHONPATH"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with Index.open(tmp_path / "ix") as index:
        assert index.check().ok
        snap = index.snapshot()
        assert len(snap.pages) == 10
        book = index.codebook(snap)
        for page in snap.pages:
            np.testing.assert_array_equal(index.page_codes(snap, page), book.assign(index.page_vectors(snap, page)))


def test_willneed_advises_page_aligned_spans_of_the_mapping():
    import mmap

    from colrag.store.vectors import willneed

    calls = []

    class FakeMapping(bytearray):  # stands in for mmap.mmap: a buffer with madvise
        def madvise(self, *args):
            calls.append(args)

    class Mapped(np.ndarray):
        pass

    mapping = FakeMapping(4 * mmap.PAGESIZE)
    arr = np.frombuffer(mapping, dtype=np.uint8)[128:].view(Mapped)  # data starts 128 bytes into the mapping, like an .npy
    arr._mmap = mapping
    willneed(arr, [(mmap.PAGESIZE + 10, 100), (0, 8)])
    assert calls == [(mmap.MADV_WILLNEED, mmap.PAGESIZE, 128 + 10 + 100), (mmap.MADV_WILLNEED, 0, 128 + 8)]
    willneed(np.zeros(10), [(0, 10)])  # an array in memory: nothing to advise, no error
