"""Page features in the store: committed with the vectors, crash leftovers dropped, opt-out, older indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from colrag.errors import InputError
from colrag.store import Index, RetrieverInfo
from colrag.store import features as pf
from colrag.vlm.image_features import ImageFeatures
from tests.index_helpers import FakeRetriever

HIDDEN = 16
INFO = RetrieverInfo("fake-0", "fake", 128, 768 * 28 * 28, vision_hash="ab" * 32, hidden_size=HIDDEN)


def _feats(seed: int, grid=(1, 4, 6)) -> ImageFeatures:
    n = int(np.prod(grid)) // 4
    rng = np.random.default_rng(seed)
    return ImageFeatures(rng.standard_normal((n, HIDDEN)).astype(np.float32), np.array(grid), INFO.vision_hash)


def _add_doc(idx: Index, path: str, n_pages: int, seed: int, with_features: bool = True) -> int:
    fake = FakeRetriever()
    doc = idx.begin_document(path, 1, 1, f"sha-{path}", n_pages)
    vecs = [fake.embed_queries([f"{path} {i}"])[0] for i in range(n_pages)]
    feats = [_feats(seed + i) for i in range(n_pages)] if with_features else None
    idx.add_pages(doc, [(i + 1, 10, 10, v) for i, v in enumerate(vecs)], [], features=feats)
    idx.finish_document(doc)
    return doc


def _read(idx: Index, path: str, page_no: int) -> ImageFeatures:
    return pf.read_hit(idx, idx.snapshot(), path, page_no)


def test_features_are_stored_read_back_and_counted(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as idx:
        _add_doc(idx, "/a.pdf", 3, seed=10)
        stats = idx.stats()
    assert stats["pages_with_features"] == 3
    assert stats["feature_bytes"] == 3 * 6 * HIDDEN * 2 and stats["feature_bytes_per_page"] == 6 * HIDDEN * 2
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["page_features"] == {"vision_hash": INFO.vision_hash, "hidden_size": HIDDEN, "encoding": "float16"}
    with Index.open(tmp_path / "ix") as idx:
        got = _read(idx, "/a.pdf", 2)
        want = _feats(11)
        np.testing.assert_allclose(got.embeds, want.embeds, rtol=1e-3, atol=1e-3)
        assert got.grid_thw.tolist() == [1, 4, 6] and got.vision_hash == INFO.vision_hash
        assert idx.check().ok


def test_uncommitted_tails_and_unreferenced_files_are_dropped_by_the_next_writer(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as idx:
        doc = _add_doc(idx, "/a.pdf", 2, seed=1)
    folder = tmp_path / "ix" / pf.FEATURES_DIR
    file = folder / pf.file_name(doc)
    committed = file.stat().st_size
    with open(file, "ab") as f:  # a writer killed after appending, before its commit
        f.write(b"\x00" * 1000)
    (folder / pf.file_name(999)).write_bytes(b"x" * 64)  # a document that never committed
    (folder / "notes.txt").write_text("not colrag's")
    with Index.open(tmp_path / "ix") as idx:  # readers ignore the tail
        assert _read(idx, "/a.pdf", 2).n_tokens == 6
    with Index.open_writer(tmp_path / "ix", INFO) as idx:
        assert file.stat().st_size == committed
        assert not (folder / pf.file_name(999)).exists() and (folder / "notes.txt").exists()
        assert idx.check().ok


def test_a_failed_commit_leaves_no_features(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as idx:
        doc = idx.begin_document("/a.pdf", 1, 1, "s", 2)
        vec = FakeRetriever().embed_queries(["x"])[0]
        bad = ImageFeatures(np.zeros((6, HIDDEN + 1), np.float32), np.array([1, 4, 6]))
        with pytest.raises(InputError):
            idx.add_pages(doc, [(1, 10, 10, vec), (2, 10, 10, vec)], [], features=[_feats(1), bad])
        assert (tmp_path / "ix" / pf.FEATURES_DIR / pf.file_name(doc)).stat().st_size == 0
        idx.add_pages(doc, [(1, 10, 10, vec), (2, 10, 10, vec)], [], features=[_feats(1), None])
        idx.finish_document(doc)
        assert idx.stats()["pages_with_features"] == 1 and idx.check().ok


def test_opting_out_and_older_indexes(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO, page_features=False) as idx:
        assert not idx.keeps_features
        _add_doc(idx, "/old.pdf", 2, seed=1)
        assert idx.stats()["pages_with_features"] == 0 and idx.stats()["features"] is None
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert "page_features" not in manifest
    with Index.open(tmp_path / "ix") as idx, pytest.raises(pf.FeaturesUnavailable):
        _read(idx, "/old.pdf", 1)
    # an index without features gains them for the pages indexed from now on
    with Index.open_writer(tmp_path / "ix", INFO) as idx:
        _add_doc(idx, "/new.pdf", 3, seed=5)
        stats = idx.stats()
    assert stats["pages"] == 5 and stats["pages_with_features"] == 3
    with Index.open(tmp_path / "ix") as idx:
        assert _read(idx, "/new.pdf", 3).n_tokens == 6
        with pytest.raises(pf.FeaturesUnavailable, match="no stored features"):
            _read(idx, "/old.pdf", 2)
    # a retriever that names no vision tower stores none
    plain = RetrieverInfo("fake-0", "fake", 128, 768 * 28 * 28)
    with Index.open_writer(tmp_path / "ix2", plain) as idx:
        assert not idx.keeps_features


def test_removing_and_replacing_documents_deletes_their_files(tmp_path):
    with Index.open_writer(tmp_path / "ix", INFO) as idx:
        a = _add_doc(idx, "/a.pdf", 2, seed=1)
        b = _add_doc(idx, "/b.pdf", 2, seed=3)
        folder = tmp_path / "ix" / pf.FEATURES_DIR
        assert {f.name for f in folder.iterdir()} == {pf.file_name(a), pf.file_name(b)}
        b2 = _add_doc(idx, "/b.pdf", 1, seed=7)  # a new version replaces the old one
        assert {f.name for f in folder.iterdir()} == {pf.file_name(a), pf.file_name(b2)}
        idx.remove_documents(["/a.pdf"])
        assert {f.name for f in folder.iterdir()} == {pf.file_name(b2)}
        assert idx.stats()["pages_with_features"] == 1 and idx.check().ok


@pytest.mark.parametrize("encoding", [pf.FLOAT16, pf.INT8_ROW])
def test_encodings_round_trip(encoding):
    x = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32) * 3
    x[3] = 0.0
    data = pf.encode(x, encoding)
    assert len(data) == 50 * pf.row_bytes(encoding, 64)
    y = pf.decode(data, 50, 64, encoding)
    err = np.abs(y - x).max(axis=1) / np.maximum(np.abs(x).max(axis=1), 1e-9)
    assert err.max() <= (1e-3 if encoding == pf.FLOAT16 else 0.5 / 127 + 1e-6)
    assert np.all(y[3] == 0)


def test_a_catalog_from_before_page_features_is_read_as_is_and_upgraded_by_a_writer(tmp_path):
    from colrag.store import catalog as cat
    from tests.test_migrate import make_schema_2_index

    make_schema_2_index(tmp_path / "ix", n_docs=1, pages=2, codebook=False)  # catalog version 2: no feature tables
    with Index.open(tmp_path / "ix") as idx:  # a reader (which upgrades the vectors to FAISS files) finds no features
        assert len(idx.snapshot().pages) == 2 and idx.stats()["pages_with_features"] == 0 and idx.check().ok
        with pytest.raises(pf.FeaturesUnavailable):
            _read(idx, "/docs/0.pdf", 1)
    with Index.open_writer(tmp_path / "ix", INFO) as idx:  # a writer migrates, then stores features
        assert cat.version(idx.conn) == cat.latest_version() >= 3
        _add_doc(idx, "/new.pdf", 1, seed=4)
        assert idx.stats()["pages_with_features"] == 1
