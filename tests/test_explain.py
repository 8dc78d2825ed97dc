"""Why this page: similarity maps over the merged patch grid, their token order, the heatmap PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from colrag.errors import InputError
from colrag.explain import explain_page, merged_grid, render_heatmap, similarity_map
from colrag.vlm.constants import CLIP_MEAN, CLIP_STD, RETRIEVER_MAX_PIXELS, RETRIEVER_MIN_PIXELS
from colrag.vlm.preprocess import preprocess_image, smart_resize


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _page(n_prefix: int, grid: tuple[int, int], n_suffix: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(rng.standard_normal((n_prefix + grid[0] * grid[1] + n_suffix, 128)))  # (n_rows, 128)


def test_map_has_the_grid_shape():
    grid = (7, 11)
    page = _page(4, grid, 8)
    q = _unit(np.random.default_rng(1).standard_normal((15, 128)))
    for mode in ("contribution", "max"):
        assert similarity_map(q, page, 4, grid, mode=mode).shape == grid


def test_merged_grid_follows_smart_resize():
    for size in ((1275, 1650), (1650, 1275), (300, 200), (4000, 500)):
        h, w = merged_grid(size, min_pixels=RETRIEVER_MIN_PIXELS, max_pixels=RETRIEVER_MAX_PIXELS)
        rh, rw = smart_resize(
            size[1], size[0], factor=28, min_pixels=RETRIEVER_MIN_PIXELS, max_pixels=RETRIEVER_MAX_PIXELS
        )
        assert (h, w) == (rh // 28, rw // 28) and h * w * 28 * 28 <= RETRIEVER_MAX_PIXELS


def test_brightest_patches_are_the_ones_the_query_matched():
    n_prefix, grid = 4, (6, 9)
    page = _page(n_prefix, grid, 6)
    rng = np.random.default_rng(2)
    targets = {5: 1.0, 23: 0.9, 40: 0.8}  # patch index -> how closely a query token matches it
    rows = []
    for patch, strength in targets.items():
        noise = _unit(rng.standard_normal(128))
        rows.append(strength * page[n_prefix + patch] + (1 - strength) * noise)
    rows.append(page[1])  # a query token whose best row is a prompt token: it adds nothing to the map
    q = _unit(np.stack(rows))  # (4, 128)
    smap = similarity_map(q, page, n_prefix, grid)
    flat = smap.ravel()
    assert set(np.flatnonzero(flat)) == set(targets)
    assert int(flat.argmax()) == 5
    sims = q @ page.T
    assert flat.sum() == pytest.approx(sims[:3].max(axis=1).sum(), rel=1e-5)  # the image patches' share of MaxSim
    top3 = set(np.argsort(similarity_map(q, page, n_prefix, grid, mode="max").ravel())[-3:])
    assert top3 == set(targets)
    assert np.unravel_index(5, grid) == (0, 5) and smap[0, 5] == flat.max()  # row-major (h, w)


def test_map_rejects_a_grid_that_does_not_fit():
    page = _page(4, (3, 3), 2)
    with pytest.raises(InputError, match="not the one that was embedded"):
        similarity_map(page[:2], page, 4, (4, 4))
    with pytest.raises(InputError, match="unknown similarity map mode"):
        similarity_map(page[:2], page, 4, (3, 3), mode="mean")


def test_image_tokens_are_row_major_over_the_merged_grid():
    """Each merged token k holds the 2x2 patches of cell (k // w, k % w): checked on colrag's preprocessing."""
    h, w = 3, 5
    pixels = np.zeros((h * 28, w * 28, 3), dtype=np.uint8)
    for i in range(h):
        for j in range(w):
            pixels[i * 28 : (i + 1) * 28, j * 28 : (j + 1) * 28] = (40 * i + 20, 40 * j + 20, 128)
    pre = preprocess_image(Image.fromarray(pixels), min_pixels=4 * 28 * 28, max_pixels=RETRIEVER_MAX_PIXELS)
    assert tuple(pre.grid_thw) == (1, 2 * h, 2 * w) and pre.n_tokens == h * w
    patches = pre.pixel_values.reshape(h * w, 4, 3, 2, 14, 14)  # (token, 2x2 patches, C, temporal, 14, 14)
    mean, std = np.asarray(CLIP_MEAN), np.asarray(CLIP_STD)
    rgb = (patches.mean(axis=(1, 3, 4, 5)) * std + mean) * 255  # (token, C)
    for k in range(h * w):
        assert round((rgb[k, 0] - 20) / 40) == k // w
        assert round((rgb[k, 1] - 20) / 40) == k % w


def test_heatmap_png_has_the_page_size_and_shows_the_hot_patch(tmp_path):
    page = Image.new("RGB", (300, 200), (255, 255, 255))
    smap = np.zeros((4, 6), dtype=np.float32)
    smap[1, 4] = 2.0
    smap[3, 0] = 0.5
    out = render_heatmap(page, smap, tmp_path / "sub" / "heat.png")
    assert out.is_file()
    img = Image.open(out)
    assert img.format == "PNG" and img.size == page.size
    arr = np.asarray(img.convert("RGB"), dtype=np.int32)
    assert arr.std() > 0  # not uniform
    hot, warm, cold = arr[75, 225], arr[185, 20], arr[10, 10]  # cell (1,4), cell (3,0), an empty cell
    assert np.abs(hot - cold).sum() > np.abs(warm - cold).sum() > 0
    assert cold[0] == cold[1] == cold[2]  # an empty cell shows the gray page
    with_legend = render_heatmap(page, smap, tmp_path / "legend.png", legend=True)
    assert Image.open(with_legend).size[0] == 300 and Image.open(with_legend).size[1] > 200


def test_explain_page_with_the_tiny_retriever(tiny_retriever_bundle, tmp_path):
    from colrag.vlm.retriever import Retriever

    r = Retriever.load(tiny_retriever_bundle)
    rng = np.random.default_rng(0)
    page = Image.fromarray(rng.integers(0, 255, (330, 250, 3), dtype=np.uint8))
    [vectors] = r.embed_images([page])  # (n_rows, 128)
    h, w = merged_grid(page.size, min_pixels=r.min_pixels, max_pixels=r.max_pixels)
    assert len(vectors) == len(r.page_ids(h * w))
    out = explain_page(r, "what is on this page?", page, vectors.astype(np.float16), tmp_path / "why.png", legend=False)
    assert Image.open(out).size == page.size
    with pytest.raises(InputError, match="render the page with the index's render options"):
        explain_page(r, "q", page.resize((500, 500)), vectors, tmp_path / "bad.png")
