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
