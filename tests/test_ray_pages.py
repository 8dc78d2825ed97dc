"""Pages rendered and embedded on a local 2-worker Ray cluster (colrag.ray_pages), with the
tiny retriever: the same vectors, bit for bit, as rendering and embedding in this process.
Skipped unless the `ray` extra is installed (`pip install 'colrag[ray]'`; CI installs it)."""

from __future__ import annotations

import numpy as np
import pytest

from colrag.render import RenderOptions, open_pdf, render_page
from tests.index_helpers import make_pdf


@pytest.fixture(scope="module")
def ray_pool(tiny_retriever_bundle):
    pytest.importorskip("ray")
    from colrag.ray_pages import RayPages

    with RayPages(tiny_retriever_bundle, workers=2, threads=1, render=RenderOptions()) as pool:
        yield pool


def test_ray_pages_equal_single_process_bit_for_bit(ray_pool, tiny_retriever_bundle, tmp_path):
    from colrag.vlm.retriever import Retriever

    pdf = make_pdf(tmp_path / "r.pdf", 5, "ray")
    outcomes = list(ray_pool.run(pdf, [1, 2, 3, 4, 5, 9]))
    assert [o.page_no for o in outcomes] == [1, 2, 3, 4, 5, 9]
    local = Retriever.load(tiny_retriever_bundle, threads=1)
    with open_pdf(pdf) as doc:
        for out in outcomes[:5]:
            assert out.error is None
            rendered = render_page(doc, out.page_no - 1, RenderOptions())
            (expected,) = local.embed_images([rendered.image])
            assert (out.width, out.height) == rendered.image.size
            assert out.vectors.dtype == np.float32 and out.vectors.shape == expected.shape
            assert out.vectors.tobytes() == expected.tobytes()
    assert outcomes[5].vectors is None and outcomes[5].error.startswith("cannot render:")


def test_without_ray_the_error_names_the_extra(monkeypatch, tmp_path):
    import sys

    from colrag.ray_pages import RayPages, RayUnavailable

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayUnavailable, match=r"pip install 'colrag\[ray\]'"):
        RayPages(tmp_path)


def _docs(tmp_path):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 3, "a")
    make_pdf(docs / "sub" / "b.pdf", 2, "b", size=(400, 900))
    return docs


def test_ray_index_equals_single_process_index(ray_pool, tiny_retriever_bundle, tmp_path):
    """`colrag index --ray` (Indexer with RayPages): the same pages, the same stored vectors and the
    same page features, byte for byte, as indexing in this process."""
    from colrag.indexer import Indexer
    from colrag.store import Index, RetrieverInfo
    from colrag.store import features as pf
    from colrag.vlm.retriever import Retriever

    docs = _docs(tmp_path)
    model = Retriever.load(tiny_retriever_bundle, threads=1)
    info = RetrieverInfo.of(model)
    with Index.open_writer(tmp_path / "single", info) as ix:
        single = Indexer(ix, model, commit_pages=2).run([docs])
    with Index.open_writer(tmp_path / "ray", info) as ix:
        assert ix.keeps_features
        fanned = Indexer(ix, model, commit_pages=2, pages_source=ray_pool).run([docs])
    assert single.ok and fanned.ok and single.pages == fanned.pages == 5
    with Index.open(tmp_path / "single") as a, Index.open(tmp_path / "ray") as b:
        sa, sb = a.snapshot(), b.snapshot()
        rows = [(p.path, p.page_no, p.width, p.height, p.n_tokens) for p in sa.pages]
        assert rows == [(p.path, p.page_no, p.width, p.height, p.n_tokens) for p in sb.pages] and len(rows) == 5
        for pa, pb in zip(sa.pages, sb.pages, strict=True):
            assert a.page_codes(sa, pa).tobytes() == b.page_codes(sb, pb).tobytes()
            fa, fb = pf.read_hit(a, sa, pa.path, pa.page_no), pf.read_hit(b, sb, pb.path, pb.page_no)
            assert fa.embeds.tobytes() == fb.embeds.tobytes() and fa.grid_thw.tolist() == fb.grid_thw.tolist()
        assert [d.sha256 for d in a.documents()] == [d.sha256 for d in b.documents()]


def test_ray_index_into_qdrant_edge_equals_single_process(ray_pool, tiny_retriever_bundle, tmp_path):
    """`colrag index --ray --index qdrant+edge:PATH`: the same Qdrant pages and page features."""
    pytest.importorskip("qdrant_edge")
    from colrag.indexer import Indexer
    from colrag.store import RetrieverInfo
    from colrag.store.qdrant.catalog import open_catalog
    from colrag.vlm.retriever import Retriever

    docs = _docs(tmp_path)
    model = Retriever.load(tiny_retriever_bundle, threads=1)
    specs = {"single": f"qdrant+edge:{tmp_path / 'single'}", "ray": f"qdrant+edge:{tmp_path / 'ray'}"}
    for name, spec in specs.items():
        with open_catalog(spec, RetrieverInfo.of(model)) as ix:
            source = ray_pool if name == "ray" else None
            assert Indexer(ix, model, commit_pages=2, pages_source=source).run([docs]).pages == 5
    with open_catalog(specs["single"], None, create=False) as a, open_catalog(specs["ray"], None, create=False) as b:
        assert a.ix.pages() == b.ix.pages() and len(a.ix.pages()) == 5
        for f, p in sorted(a.ix.pages()):
            assert a.ix.page_vectors(f, p).tobytes() == b.ix.page_vectors(f, p).tobytes()
            assert a.read_features(f, p).embeds.tobytes() == b.read_features(f, p).embeds.tobytes()


def test_index_cli_ray_options(tmp_path):
    """--ray-workers without --ray is a usage error; without --ray nothing imports Ray."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    make_pdf(tmp_path / "docs" / "a.pdf", 1, "a")
    args = ["index", str(tmp_path / "docs"), "--index", str(tmp_path / "ix"), "--ray-workers", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "colrag", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--ray-workers goes with --ray" in done.stderr
    assert not (tmp_path / "ix").exists()
