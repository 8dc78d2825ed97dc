"""The FAISS files of an index: SQ8 segments (decode = FAISS's, versions, rollback), coarse
centroids trained through FAISS with pymupdf loaded, page lists memory-mapped."""

from __future__ import annotations

import numpy as np
import pymupdf  # noqa: F401  (loaded first on purpose: faiss.Kmeans breaks once it is, the IVF path must not)
import pytest

from colrag.errors import IndexStoreError
from colrag.scoring import maxsim
from colrag.search import maxsim_sq8
from colrag.store import coarse, faiss_io, lists
from colrag.store import segments as sg
from tests.index_helpers import clustered_rows


def rows(n: int, seed: int = 0) -> np.ndarray:
    return sg.unit_rows(np.random.default_rng(seed).standard_normal((n, 128)))


def test_sq8_decode_is_faiss_decode_and_close_to_the_rows(tmp_path):
    x = rows(2000)
    w = sg.SegmentWriter(tmp_path, 128, 1, 0, None, 0)
    w.append(x)
    name = w.write()
    w.committed()
    codes = sg.SegmentReader(tmp_path, 128).rows(name, 2000)
    assert codes.dtype == np.uint8 and codes.shape == (2000, 128)
    index = faiss_io.read_index(tmp_path, name, mmap="codes")
    assert np.array_equal(sg.decode(codes), index.sa_decode(np.ascontiguousarray(codes)))
    assert np.abs(sg.decode(codes) - x).max() <= 1 / 255 + 1e-6  # half a step of 2/255


def test_maxsim_sq8_equals_maxsim_over_decoded_rows_for_any_thread_count():
    pages = [np.random.default_rng(i).integers(0, 256, (30 + i, 128), dtype=np.uint8) for i in range(70)]
    q = rows(9, seed=5)
    expected = maxsim([q], [sg.decode(p) for p in pages])[0]
    one = maxsim_sq8(q, pages, workers=1)
    np.testing.assert_allclose(one, expected, rtol=2e-6)
    for workers in (2, 3, 4):
        assert np.array_equal(maxsim_sq8(q, pages, workers=workers), one)  # same blocks, same bits


def test_segment_versions_rollback_and_reopen(tmp_path):
    x = rows(900)
    w = sg.SegmentWriter(tmp_path, 128, 1, 0, None, 0)
    assert w.append(x[:500]) == 0
    first = w.write()
    assert w.committed() is None and first == sg.segment_name(1, 1)
    assert w.append(x[500:]) == 500
    pending = w.write()
    w.rollback()  # the catalog transaction failed
    assert not (tmp_path / pending).exists() and w.rows == 500
    w.append(x[500:])
    second = w.write()
    assert w.committed() == first and second == sg.segment_name(1, 2)
    again = sg.SegmentWriter(tmp_path, 128, 1, 2, second, 900)
    assert again.rows == 900
    np.testing.assert_array_equal(sg.SegmentReader(tmp_path, 128).rows(second, 900), sg.encode(sg.new_segment(128), x))


def test_reader_refuses_names_colrag_does_not_write_and_symlinks(tmp_path):
    reader = sg.SegmentReader(tmp_path, 128)
    for bad in ("../x.faiss", "seg-1.faiss", "/etc/passwd", "seg-000001-v000001.faiss/../../a"):
        with pytest.raises(IndexStoreError, match="does not write"):
            reader.rows(bad, 1)
    (tmp_path / "real").mkdir()
    w = sg.SegmentWriter(tmp_path / "real", 128, 1, 0, None, 0)
    w.append(rows(3))
    name = w.write()
    (tmp_path / sg.segment_name(2, 1)).symlink_to(tmp_path / "real" / name)
    with pytest.raises(IndexStoreError, match="missing"):
        reader.rows(sg.segment_name(2, 1), 3)


def test_coarse_centroids_train_through_faiss_with_pymupdf_loaded():
    x = np.concatenate([clustered_rows(400, seed=s, n_dirs=64) for s in range(8)])
    quantizer = coarse.train(x)
    k = coarse.n_centroids(len(x))
    assert quantizer.ntotal == k
    c = coarse.centroids(quantizer)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-4)  # spherical k-means
    ids = coarse.assign(quantizer, x[:100])
    np.testing.assert_array_equal(ids, np.argmax(x[:100] @ c.T, axis=1))
    sets = [coarse.unpack(b) for b in coarse.page_centroids(quantizer, [x[:50], x[50:100]])]
    assert np.array_equal(sets[0], np.unique(ids[:50])) and np.array_equal(sets[1], np.unique(ids[50:]))


def test_page_lists_round_trip_memory_mapped(tmp_path):
    sets = [np.array([0, 3]), np.array([3]), np.array([1, 2, 3])]
    ivf = lists.build(4, np.array([10, 11, 12]), sets)
    name = lists.lists_name(7)
    faiss_io.write_index(ivf, tmp_path, name)
    pl = lists.PageLists(faiss_io.read_index(tmp_path, name, mmap="lists"), 7, 12)
    assert [sorted(pl.pages(c).tolist()) for c in range(4)] == [[10], [12], [12], [10, 11, 12]]
    assert pl.all_page_ids().tolist() == [10, 11, 12] and pl.entries == 6
    assert not list(tmp_path.glob(".*"))  # no temp file left
