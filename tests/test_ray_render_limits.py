"""`colrag index --ray`: Ray workers render in a render child under --render-timeout, like the
single-process indexer (issue 17 / issue 15 item 16). Its own module: the local Ray cluster of
tests/test_ray_pages.py is gone by then (2 CPUs; one pool at a time)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from colrag.render import RenderOptions
from tests.index_helpers import make_pdf


@pytest.mark.slow  # a local Ray cluster and a 5 s render time limit
def test_a_page_that_hangs_on_a_ray_worker_is_killed_recorded_and_the_run_goes_on(tiny_retriever_bundle, tmp_path):
    pytest.importorskip("ray")
    from colrag.indexer import Indexer
    from colrag.ray_pages import RayPages
    from colrag.store import Index, RetrieverInfo
    from colrag.vlm.retriever import Retriever

    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 1, "a")
    make_pdf(docs / "b-slow.pdf", 3, "b")  # page 2 never finishes rendering (tests/render_workers.py)
    make_pdf(docs / "c.pdf", 2, "c")
    before = set(Path(tempfile.gettempdir()).glob("colrag-ray-*"))
    model = Retriever.load(tiny_retriever_bundle, threads=1)
    hang = [sys.executable, "-m", "tests.render_workers", "hang:2"]
    with (
        RayPages(
            tiny_retriever_bundle, workers=2, threads=1, render=RenderOptions(), render_timeout=5, render_command=hang
        ) as pool,
        Index.open_writer(tmp_path / "ix", RetrieverInfo.of(model)) as ix,
    ):
        report = Indexer(ix, model, commit_pages=2, pages_source=pool).run([docs])
    assert [(Path(f.path).name, f.page, f.reason) for f in report.failures] == [
        ("b-slow.pdf", 2, "rendering took longer than 5 s")
    ]
    with Index.open(tmp_path / "ix") as index:
        pages = sorted((Path(p.path).name, p.page_no) for p in index.snapshot().pages)
        assert index.check().ok
    assert pages == [("a.pdf", 1), ("b-slow.pdf", 1), ("b-slow.pdf", 3), ("c.pdf", 1), ("c.pdf", 2)]
    assert set(Path(tempfile.gettempdir()).glob("colrag-ray-*")) <= before  # the workers' document copies are gone
