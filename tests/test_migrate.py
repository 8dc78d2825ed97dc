"""A schema-2 index (int8 rows, centroid codes, two-level codebook, ann/ cache) is upgraded in place to
FAISS files by the first writer (or reader) that opens it: no page re-embedded, one line said, and a
failure half-way leaves the schema-2 index as it was."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from colrag.scoring import maxsim
from colrag.search import Searcher
from colrag.store import Index, coarse, faiss_io
from colrag.store import catalog as cat
from colrag.store.index import MANIFEST_FILE
from colrag.store.segments import SEGMENTS_DIR
from tests.index_helpers import FakeRetriever, clustered_rows
from tests.test_store_safety import INFO, SCHEMA_BEFORE_MIGRATIONS


def quantize(x: np.ndarray) -> np.ndarray:
    """Schema 2's int8 rows: max |x| -> 127 per row."""
    return np.rint(x * (127.0 / np.abs(x).max(axis=1, keepdims=True))).astype(np.int8)


def dequantize(q: np.ndarray) -> np.ndarray:
    x = q.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_schema_2_index(path: Path, n_docs: int = 3, pages: int = 4, tokens: int = 30, codebook: bool = True) -> dict:
    """Write an index exactly as colrag's schema 2 laid it out; returns its rows and codes per page."""
    (path / SEGMENTS_DIR).mkdir(parents=True)
    (path / "ann").mkdir()
    rows, codes, spans = [], [], {}
    k1, k2 = 4, 8
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((k1 + k1 * k2, 128)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    with closing(sqlite3.connect(path / "catalog.sqlite")) as c:
        c.executescript(SCHEMA_BEFORE_MIGRATIONS)
        c.execute("INSERT INTO meta VALUES ('generation', ?)", (str(n_docs),))
        c.execute(
            "INSERT INTO segments (id, name, committed_rows) VALUES (1, 'seg-000001.i8', ?)", (n_docs * pages * tokens,)
        )
        offset = 0
        for d in range(n_docs):
            c.execute(
                "INSERT INTO documents VALUES (?, ?, 1, 1, ?, ?, 'done', NULL, 0)",
                (d + 1, f"/docs/{d}.pdf", f"sha{d}", pages),
            )
            for p in range(pages):
                q8 = quantize(clustered_rows(tokens, seed=100 * d + p, n_dirs=16))
                page_codes = np.argmax(dequantize(q8) @ centroids[k1:].T, axis=1).astype("<u2")
                rows.append(q8)
                codes.append(page_codes)
                c.execute(
                    "INSERT INTO pages (doc_id, page_no, width, height, segment_id, row_offset, n_tokens) "
                    "VALUES (?, ?, 10, 20, 1, ?, ?)",
                    (d + 1, p + 1, offset, tokens),
                )
                spans[(f"/docs/{d}.pdf", p + 1)] = (q8, page_codes)
                offset += tokens
        if codebook:
            c.execute(
                "INSERT INTO meta VALUES ('codebook', ?)",
                (json.dumps({"file": "codebook.npy", "coarse": k1, "fine": k2, "trained_on": offset}),),
            )
        c.execute("PRAGMA user_version = 2")
        c.commit()
    (path / SEGMENTS_DIR / "seg-000001.i8").write_bytes(
        np.concatenate(rows).tobytes() + b"\x13" * 128
    )  # + an uncommitted tail
    if codebook:
        (path / SEGMENTS_DIR / "seg-000001.codes").write_bytes(np.concatenate(codes).tobytes())
        np.save(path / SEGMENTS_DIR / "codebook.npy", centroids.astype(np.float16))
    (path / "ann" / "state.json").write_text("{}")
    np.save(path / "ann" / "g3.pages.npy", np.zeros(3))
    manifest = {
        "format": "colrag-index",
        "schema_version": 2,
        "colrag_version": "0.1.0",
        "created_at": 0.0,
        "retriever": {"bundle_id": INFO.bundle_id, "name": INFO.name},
        "dim": 128,
        "max_pixels": INFO.max_pixels,
        "render": {"target_pixels": 1204224, "max_side": 4096},
        "vector_dtype": "int8",
        "vector_encoding": "int8 per row, max |x| -> 127, unit norm implied (x = q / ||q||)",
        "code_dtype": "uint16",
    }
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return spans


def test_schema_2_index_is_upgraded_in_place_without_re_embedding(tmp_path, capsys):
    spans = make_schema_2_index(tmp_path / "ix")
    (tmp_path / "ix" / SEGMENTS_DIR / "notes.txt").write_text("mine")  # a user's file is kept
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        snap = index.snapshot()
        assert len(snap.pages) == 12 and index.check().ok
        sets = {pid: coarse.unpack(b) for pid, b in cat.visible_page_centroids(index.conn)}
        for page in snap.pages:
            q8, codes = spans[(page.path, page.page_no)]
            assert np.abs(index.page_vectors(snap, page) - dequantize(q8)).max() <= 1 / 255 + 1e-6
            np.testing.assert_array_equal(sets[page.id], np.unique(codes))  # the old codes, not re-assigned
        assert snap.coarse["n_centroids"] == 32 and index.coarse_quantizer(snap).ntotal == 32
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "upgraded index" in err and "12 pages" in err and "none re-embedded" in err
    manifest = json.loads((tmp_path / "ix" / MANIFEST_FILE).read_text())
    assert manifest["schema_version"] == 3 and "vector_dtype" not in manifest
    names = sorted(p.name for p in (tmp_path / "ix" / SEGMENTS_DIR).iterdir())
    assert (
        names == ["coarse-000001.faiss", "notes.txt", "seg-000001-v000001.faiss"]
        and not (tmp_path / "ix" / "ann").exists()
    )
    with Index.open(tmp_path / "ix") as reader:  # and it searches like any index (every page a candidate: exact)
        q = clustered_rows(20, seed=5, n_dirs=16)
        snap = reader.snapshot()
        exact = maxsim([q], [reader.page_vectors(snap, p) for p in snap.pages])[0]
        (hit,) = Searcher(reader, None).search_vectors(q, 1)
        assert hit.score == pytest.approx(float(exact.max()), rel=1e-6)
        assert len(Searcher(reader, None, exact_all_pages=0, candidates=4).search_vectors(q, 3)) == 3
    capsys.readouterr()
    with Index.open_writer(tmp_path / "ix", INFO):
        pass
    assert capsys.readouterr().err == ""  # said once


def test_a_reader_upgrades_a_schema_2_index_too(tmp_path):
    make_schema_2_index(tmp_path / "ix", codebook=False)
    with Index.open(tmp_path / "ix") as reader:
        snap = reader.snapshot()
        assert len(snap.pages) == 12 and snap.coarse is None and reader.check().ok


@pytest.mark.parametrize("fail_at", ["coarse file", "catalog"])
def test_a_failed_upgrade_leaves_the_schema_2_index_as_it_was(tmp_path, monkeypatch, fail_at):
    make_schema_2_index(tmp_path / "ix")
    folder = tmp_path / "ix"
    before = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    real_write = faiss_io.write_index

    def failing_write(index, where, name):
        if name.startswith("coarse"):
            raise OSError(28, "No space left on device")
        real_write(index, where, name)

    def failing_migrate(conn):
        raise sqlite3.OperationalError("disk I/O error")

    if fail_at == "coarse file":
        monkeypatch.setattr(faiss_io, "write_index", failing_write)
    else:
        monkeypatch.setattr(cat, "migrate", failing_migrate)
    with pytest.raises((OSError, sqlite3.OperationalError)):
        Index.open_writer(folder, INFO)
    monkeypatch.undo()
    after = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for name, data in before.items():  # every schema-2 file intact (new, unreferenced files may lie beside them)
        if not name.startswith(cat.CATALOG_FILE):  # (the writer switched the catalog to WAL, as schema 2's did)
            assert after[name] == data, name
    with closing(sqlite3.connect(folder / cat.CATALOG_FILE)) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 2
        assert c.execute("SELECT name FROM segments").fetchall() == [("seg-000001.i8",)]
        assert "centroids" not in [r[1] for r in c.execute("PRAGMA table_info(pages)")]
    assert json.loads((folder / MANIFEST_FILE).read_text())["schema_version"] == 2
    with Index.open_writer(folder, INFO) as index:  # the next writer upgrades it
        assert len(index.snapshot().pages) == 12 and index.check().ok and not index.check().notes


def test_fake_retriever_search_after_upgrade(tmp_path):
    make_schema_2_index(tmp_path / "ix")
    with Index.open(tmp_path / "ix") as reader:
        assert len(Searcher(reader, FakeRetriever()).search("page one", 5)) == 5
