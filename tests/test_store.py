"""Index storage: manifest checks, visibility of commits, crash leftovers, integrity check, lock, FAISS cache."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from colrag.errors import IndexStoreError
from colrag.store import Index, RetrieverInfo
from colrag.store import ann
from colrag.store.index import MANIFEST_FILE
from colrag.store.vectors import SEGMENTS_DIR
from tests.index_helpers import FakeRetriever

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
    assert manifest["schema_version"] == 1 and manifest["vector_dtype"] == "float16"
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
            np.testing.assert_allclose(reader.page_vectors(snap, snap.pages[1]), unit_rows(6, 1), atol=1e-3)
        # a new version replaces the old one atomically
        add_doc(index, "/a.pdf", 1, seed=7)
        snap = index.snapshot()
        assert [(p.path, p.page_no) for p in snap.pages] == [("/a.pdf", 1)]
        assert index.stats()["dead_vector_bytes"] > 0
        assert index.check().ok


def test_uncommitted_tail_is_ignored_then_truncated(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        add_doc(index, "/a.pdf", 2)
    seg = next((tmp_path / "ix" / SEGMENTS_DIR).iterdir())
    committed = seg.stat().st_size
    with open(seg, "ab") as f:  # what a writer killed between append and commit leaves behind
        f.write(b"\x13" * 1000)
    (tmp_path / "ix" / SEGMENTS_DIR / "seg-000099.f16").write_bytes(b"\0" * 512)
    with Index.open(tmp_path / "ix") as reader:
        report = reader.check()
        assert report.ok and any("tail" in n for n in report.notes)
        assert len(reader.snapshot().pages) == 2
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        assert seg.stat().st_size == committed
        assert not (tmp_path / "ix" / SEGMENTS_DIR / "seg-000099.f16").exists()
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


def test_ann_cache_builds_extends_and_rebuilds(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        for i in range(6):
            add_doc(index, f"/d{i}.pdf", 2, seed=i)
        snap = index.snapshot()
        built = ann.ensure(index, snap, save_to_disk=True)
        assert built.generation == snap.generation and built.index.ntotal == sum(p.n_tokens for p in snap.pages)
        loaded = ann.load(index)
        assert loaded is not None and loaded.generation == snap.generation
        np.testing.assert_array_equal(loaded.token_pages, built.token_pages)
        # one more document: the stale cache is extended, not rebuilt
        add_doc(index, "/d9.pdf", 1, seed=9)
        snap2 = index.snapshot()
        extended = ann.ensure(index, snap2, save_to_disk=True)
        assert extended.index.ntotal == sum(p.n_tokens for p in snap2.pages)
        assert set(extended.token_pages.tolist()) == {p.id for p in snap2.pages}
        # the nearest entry of a stored vector is itself
        page = snap2.pages[-1]
        vec = np.asarray(index.page_vectors(snap2, page)[:1], dtype=np.float32)
        _, pages = extended.search(vec, 1)
        assert pages[0, 0] == page.id
        # most pages removed: rebuilt from what is left
        index.remove_documents([f"/d{i}.pdf" for i in range(6)])
        snap3 = index.snapshot()
        rebuilt = ann.ensure(index, snap3)
        assert set(rebuilt.token_pages.tolist()) == {p.id for p in snap3.pages}


def test_ivf_kind_for_many_tokens(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "FLAT_MAX_TOKENS", 1000)
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        for d in range(4):
            doc = index.begin_document(f"/d{d}.pdf", 1, 1, f"s{d}", 10)
            index.add_pages(doc, [(i + 1, 10, 10, unit_rows(256, d * 10 + i)) for i in range(10)])
            index.finish_document(doc)
        snap = index.snapshot()
        built = ann.ensure(index, snap, save_to_disk=True)
        assert built.kind.startswith("ivf") and built.index.ntotal == 40 * 256
        loaded = ann.load(index)
        assert loaded.kind == built.kind and loaded.index.nprobe == ann.NPROBE
        page = snap.pages[17]
        vec = np.asarray(index.page_vectors(snap, page)[:3], dtype=np.float32)
        _, pages = loaded.search(vec, 1)
        assert (pages[:, 0] == page.id).all()
