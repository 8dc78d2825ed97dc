"""Index storage: manifest checks, visibility of commits, crash leftovers, integrity check, lock,
SQ8 vectors in FAISS files, coarse centroids and each page's centroid ids, compaction."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from colrag.errors import IndexStoreError
from colrag.scoring import maxsim
from colrag.store import Index, RetrieverInfo, coarse, faiss_io
from colrag.store import segments as sg
from colrag.store.index import MANIFEST_FILE
from colrag.store.segments import SEGMENTS_DIR, decode, encode, new_segment
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
    assert manifest["schema_version"] == 3 and manifest["vector_codec"].startswith("SQ8")
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
        with pytest.raises(IndexStoreError, match=r"old schema version 1.*re-index"):
            opener()


def test_sq8_rows_drift_from_fp32():
    """Stored SQ8 codes vs the fp32 input: per-element error, MaxSim error, ranking."""
    pages = [clustered_rows(200, seed=i, n_dirs=64) for i in range(40)]
    codec = new_segment(128)
    dec = [decode(encode(codec, p)) for p in pages]
    for p, d in zip(pages, dec, strict=True):
        assert np.abs(d - p).max() <= 1 / 255 + 1e-6  # half a step of 2/255
    queries = [clustered_rows(25, seed=1000 + i, n_dirs=64) for i in range(10)]
    exact, approx = maxsim(queries, pages), maxsim(queries, dec)
    assert np.abs(approx - exact).max() < 0.01 * 25  # < 0.01 per query token
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


def test_uncommitted_versions_are_ignored_then_deleted(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/a.pdf", 2)
    folder = tmp_path / "ix" / SEGMENTS_DIR
    (committed,) = folder.iterdir()
    leftovers = [
        folder / "seg-000001-v000099.faiss",
        folder / ".seg-000001-v000100.faiss.tmp",
        folder / "seg-000002-v000001.faiss",
    ]
    for f in leftovers:  # what a writer killed between writing a version and committing it leaves behind
        f.write_bytes(b"\0" * 512)
    with Index.open(tmp_path / "ix") as reader:
        report = reader.check()
        assert report.ok and sum("unreferenced" in n for n in report.notes) == 3
        assert len(reader.snapshot().pages) == 2
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        assert sorted(folder.iterdir()) == [committed]
        add_doc(index, "/b.pdf", 1)
        assert index.check().ok and not index.check().notes
        (current,) = folder.iterdir()
        assert current.name == "seg-000001-v000002.faiss"  # one more commit: b.pdf's pages


def test_check_finds_damage(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/a.pdf", 2)
    (seg,) = (tmp_path / "ix" / SEGMENTS_DIR).iterdir()
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2])
    with Index.open(tmp_path / "ix") as reader:
        report = reader.check()
        assert not report.ok and "damaged" in report.problems[0]
    zeros = new_segment(128)
    zeros.add_sa_codes(np.full((11, 128), 127, dtype=np.uint8))  # a valid file of near-zero vectors
    seg.unlink()
    faiss_io.write_index(zeros, seg.parent, seg.name)
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
    index.add_pages(
        doc, [(i + 1, 10, 10, clustered_rows(tokens, seed=seed * 1000 + i, n_dirs=32)) for i in range(n_pages)]
    )
    index.finish_document(doc)
    return doc


def page_sets(index: Index) -> dict[int, np.ndarray]:
    from colrag.store import catalog as cat

    return {pid: None if blob is None else coarse.unpack(blob) for pid, blob in cat.visible_page_centroids(index.conn)}


def test_coarse_centroids_start_with_every_page_assigned(tmp_path, monkeypatch):
    monkeypatch.setattr(coarse, "MIN_ROWS", 1000)
    monkeypatch.setattr(sg, "SEGMENT_MAX_ROWS", 300)  # several segments
    monkeypatch.setattr("colrag.store.writer.SEGMENT_MAX_ROWS", 300)
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_clustered(index, "/a.pdf", 10, seed=1)  # 600 rows: no centroids yet
        assert index.snapshot().coarse is None and set(page_sets(index).values()) == {None}
        assert not list((tmp_path / "ix" / SEGMENTS_DIR).glob("coarse-*"))
        add_clustered(index, "/b.pdf", 10, seed=2)  # 1,200 rows: centroids trained, earlier pages assigned
        add_clustered(index, "/c.pdf", 5, seed=3)
        snap = index.snapshot()
        quantizer = index.coarse_quantizer(snap)
        assert snap.coarse["n_centroids"] == quantizer.ntotal == coarse.n_centroids(1200)
        assert len(snap.segments) > 2 and index.check().ok
        sets = page_sets(index)
        for page in snap.pages:  # every page's centroids are FAISS's assignment of its stored tokens
            want = np.unique(coarse.assign(quantizer, index.page_vectors(snap, page)))
            np.testing.assert_array_equal(sets[page.id], want)
        stats = index.stats()
        assert stats["vector_bytes"] == stats["tokens"] * 128 and stats["centroids"] == quantizer.ntotal


def test_failed_first_coarse_commit_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(coarse, "MIN_ROWS", 1000)
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_clustered(index, "/a.pdf", 10, seed=1)
        doc = index.begin_document("/b.pdf", 1, 1, "sha-b", 10)
        real = index.conn

        class Failing:  # the transaction recording the pages (and the centroids) fails
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
        assert [f.name for f in folder.iterdir()] == [index.snapshot().segments[1][0]]  # no coarse file, no new version
        assert index.snapshot().coarse is None and index.check().ok
        index.add_pages(doc, [(i + 1, 10, 10, clustered_rows(60, seed=50 + i, n_dirs=32)) for i in range(10)])
        index.finish_document(doc)
        assert index.snapshot().coarse is not None and index.check().ok


def test_compaction_reclaims_removed_pages_and_keeps_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(coarse, "MIN_ROWS", 500)
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        for d in range(4):
            add_clustered(index, f"/d{d}.pdf", 5, seed=d)
        snap = index.snapshot()
        keep = {(p.path, p.page_no): index.page_vectors(snap, p).copy() for p in snap.pages if p.path != "/d1.pdf"}
        index.remove_documents(["/d1.pdf"])
        add_clustered(index, "/d2.pdf", 5, seed=7)  # a new version: the old one's rows are dead too
        keep = {k: v for k, v in keep.items() if k[0] != "/d2.pdf"}
        before = index.stats()
        assert before["dead_vector_bytes"] == 10 * 60 * 128
        with Index.open(tmp_path / "ix") as reader:  # a reader holding the old files keeps working
            old_snap = reader.snapshot()
            result = index.compact()
            assert [p.path for p in reader.snapshot().pages] != [] and old_snap.generation < reader.generation()
        assert result["vector_bytes_after"] == result["vector_bytes_before"] - 10 * 60 * 128
        stats = index.stats()
        assert stats["dead_vector_bytes"] == 0 and stats["pages"] == 15 and index.check().ok
        snap = index.snapshot()
        for p in snap.pages:
            if (p.path, p.page_no) in keep:
                np.testing.assert_array_equal(index.page_vectors(snap, p), keep[(p.path, p.page_no)])
        add_clustered(index, "/d9.pdf", 1, seed=9)  # writing goes on after a compaction
        assert index.check().ok and len(index.snapshot().pages) == 16


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_kill_9_while_writing_with_centroids_then_resume(tmp_path):
    """The kill -9 test with coarse centroids: rows and centroid ids become visible only with their commit."""
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 4, "a")
    make_pdf(docs / "b.pdf", 6, "b")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [
        sys.executable,
        "-m",
        "tests.index_helpers",
        str(tmp_path / "ix"),
        str(docs),
        "--slow",
        "0.2",
        "--codebook-rows",
        "60",
    ]
    proc = subprocess.Popen(
        cmd, cwd=env["PYTHONPATH"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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
        assert index.snapshot().coarse is not None  # a.pdf (4 x 24 rows) passed the threshold
    cmd = [*cmd[:-4], "--codebook-rows", "60"]
    done = subprocess.run(cmd, cwd=env["PYTHONPATH"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with Index.open(tmp_path / "ix") as index:
        assert index.check().ok
        snap = index.snapshot()
        assert len(snap.pages) == 10
        quantizer, sets = index.coarse_quantizer(snap), page_sets(index)
        for page in snap.pages:
            np.testing.assert_array_equal(
                sets[page.id], np.unique(coarse.assign(quantizer, index.page_vectors(snap, page)))
            )


def test_willneed_advises_page_aligned_spans(monkeypatch):
    import mmap

    calls = []

    class Libc:
        class madvise_fn:
            argtypes: ClassVar[list] = []

            def __call__(self, start, length, advice):
                calls.append((start, length, advice))

        madvise = madvise_fn()

    monkeypatch.setattr(faiss_io, "_LIBC", [Libc()])
    faiss_io.willneed(3 * mmap.PAGESIZE + 10, 100)
    faiss_io.willneed(5, 0)  # nothing to advise
    assert calls == [(3 * mmap.PAGESIZE, 110, mmap.MADV_WILLNEED)]
