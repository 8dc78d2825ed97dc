"""Parity of the exported retriever with the training-time reference.

The reference is transformers' ColQwen2ForRetrieval given the 3-D M-RoPE positions
(get_rope_index), which is how colpali-engine trained the checkpoints. Called as-is,
transformers uses 1-D positions for pages: test_one_d_positions_would_fail shows that
this is a real difference, so the parity tests would catch it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image, ImageDraw  # noqa: E402  (after importorskip: no torch, no test)

import colrag  # noqa: E402  (after importorskip: no torch, no test)
from colrag.errors import BundleError  # noqa: E402  (after importorskip: no torch, no test)
from colrag.vlm.bundle import verify_bundle  # noqa: E402  (after importorskip: no torch, no test)

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references

TOL = 1e-4


def synthetic_page(width: int, height: int, seed: int) -> Image.Image:
    """A page-like image: noise background, boxes and lines, different per seed."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(180, 256, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        x1, y1 = x0 + int(rng.integers(5, width // 3 + 6)), y0 + int(rng.integers(5, height // 3 + 6))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    return img


# portrait page, landscape slide, small image; none has the grid used at export time
SIZES = [(850, 1100), (1280, 720), (150, 230)]


@pytest.fixture(scope="module")
def reference(tiny_colqwen2_checkpoint):
    from transformers import ColQwen2ForRetrieval, ColQwen2Processor

    model = ColQwen2ForRetrieval.from_pretrained(tiny_colqwen2_checkpoint, dtype=torch.float32).eval()
    processor = ColQwen2Processor.from_pretrained(tiny_colqwen2_checkpoint)
    return model, processor


@pytest.fixture(scope="module")
def retriever(tiny_retriever_bundle):
    return colrag.Retriever.load(tiny_retriever_bundle)


def strip(embeddings, mask) -> list[np.ndarray]:
    return [e[m.bool()].numpy() for e, m in zip(embeddings, mask, strict=True)]


def reference_pages(reference, images, *, rope_3d: bool = True) -> list[np.ndarray]:
    model, processor = reference
    batch = processor.process_images(images=images)
    ids = batch["input_ids"]
    kwargs = {}
    if rope_3d:
        kwargs["position_ids"], _ = model.vlm.get_rope_index(
            input_ids=ids,
            mm_token_type_ids=(ids == model.config.vlm_config.image_token_id).int(),
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"],
        )
    with torch.no_grad():
        out = model(**batch, **kwargs).embeddings  # (B, S, 128)
    return strip(out, batch["attention_mask"])


def reference_queries(reference, queries) -> list[np.ndarray]:
    model, processor = reference
    batch = processor.process_queries(text=queries)
    with torch.no_grad():
        out = model(**batch).embeddings  # text only: 1-D and 3-D positions coincide
    return strip(out, batch["attention_mask"])


def assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= TOL


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_page_embeddings_match_reference(retriever, reference, size):
    image = synthetic_page(*size, seed=size[0])
    (got,) = retriever.embed_images([image])
    want = reference_pages(reference, [image])
    assert got.dtype == np.float32 and got.shape[1] == 128
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert_close([got], want)


def test_one_d_positions_would_fail(retriever, reference):
    image = synthetic_page(640, 480, seed=7)
    (got,) = retriever.embed_images([image])
    (rope_3d,) = reference_pages(reference, [image], rope_3d=True)
    (rope_1d,) = reference_pages(reference, [image], rope_3d=False)
    assert np.abs(rope_1d - rope_3d).max() > 100 * TOL  # the two conventions really differ...
    assert np.abs(got - rope_3d).max() <= TOL  # ...and colrag follows training (3-D)
    assert np.abs(got - rope_1d).max() > 100 * TOL


def test_batched_pages_equal_one_by_one_and_reference(retriever, reference):
    images = [synthetic_page(700, 500, seed=1), synthetic_page(300, 900, seed=2)]
    batched = retriever.embed_images(images, batch_size=2)  # different lengths: left padding
    single = [retriever.embed_images([img])[0] for img in images]
    assert_close(batched, single)
    assert_close(batched, reference_pages(reference, images))


def test_queries_match_reference_with_padding(retriever, reference):
    queries = ["What was the revenue in 2023?", "chart", "売上高の推移を示すグラフはどれですか？"]
    got = retriever.embed_queries(queries)
    want = reference_queries(reference, queries)
    assert len({len(w) for w in want}) == 3  # really different lengths, so padding was exercised
    assert_close(got, want)
    assert_close(retriever.embed_queries(queries[1:2]), want[1:2])


def test_query_token_ids_match_processor(retriever, reference):
    _, processor = reference
    q = "Where is the revenue table?"
    want = processor.process_queries(text=[q])["input_ids"][0].tolist()
    assert retriever.query_ids(q) == want


def test_maxsim_matches_score_retrieval(retriever, reference):
    _, processor = reference
    pages = retriever.embed_images([synthetic_page(400, 560, seed=s) for s in range(3)])
    queries = retriever.embed_queries(["first question", "a much longer second question about charts"])
    got = colrag.maxsim(queries, pages)
    want = processor.score_retrieval(
        [torch.from_numpy(q) for q in queries], [torch.from_numpy(p) for p in pages]
    ).numpy()
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert (got.argsort(axis=1) == want.argsort(axis=1)).all()


@pytest.fixture
def bundle_copy(tiny_retriever_bundle, tmp_path):
    dst = tmp_path / "retriever"
    shutil.copytree(tiny_retriever_bundle, dst)
    return dst


def test_tampered_file_is_refused_by_verify(bundle_copy):
    data = bundle_copy / "text.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, different content
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"text\.onnx\.data"):
        verify_bundle(bundle_copy)


def test_truncated_file_is_refused_on_load(bundle_copy):
    data = bundle_copy / "vision.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"vision\.onnx\.data"):
        colrag.Retriever.load(bundle_copy)


def test_missing_file_is_refused_on_load(bundle_copy):
    (bundle_copy / "embed_tokens.npy").unlink()
    with pytest.raises(BundleError, match=r"embed_tokens\.npy"):
        colrag.Retriever.load(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a colrag model bundle"):
        colrag.Retriever.load(tmp_path)


def test_intact_bundle_verifies(tiny_retriever_bundle):
    manifest = verify_bundle(tiny_retriever_bundle, "retriever")
    assert manifest["dim"] == 128 and manifest["export_checks"]["vision_max_abs_diff"] <= TOL
