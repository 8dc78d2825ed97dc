"""Weight-only int8 retriever: close to fp32 colrag on the same pages and queries."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import colrag  # noqa: E402
from colrag.compare import row_cosines as cosines  # noqa: E402
from tests.test_retriever import synthetic_page  # noqa: E402


@pytest.fixture
def int8_bundle(tiny_retriever_int8_bundle):
    return tiny_retriever_int8_bundle


def test_int8_bundle_is_quantized_and_records_drift(int8_bundle):
    from colrag.bundle import verify_bundle

    manifest = verify_bundle(int8_bundle, "retriever")
    q = manifest["quantization"]
    assert q["scheme"] == "int8"
    assert q["graphs"]["vision"]["quantized_matmuls"] > 0 and q["graphs"]["text"]["quantized_matmuls"] > 0
    assert q["graphs"]["text"]["min_cosine_vs_fp32"] >= 0.99


def test_int8_embeddings_close_to_fp32(int8_bundle, tiny_retriever_bundle):
    fp32 = colrag.Retriever.load(tiny_retriever_bundle)
    int8 = colrag.Retriever.load(int8_bundle)
    pages = [synthetic_page(600 + 37 * i, 800 - 41 * i, seed=10 + i) for i in range(4)]
    queries = ["revenue by region", "a chart of energy use", "table of contents"]
    p32, p8 = fp32.embed_images(pages), int8.embed_images(pages)
    q32, q8 = fp32.embed_queries(queries), int8.embed_queries(queries)
    for a, b in zip(p32 + q32, p8 + q8):
        assert a.shape == b.shape
        assert cosines(a, b).mean() >= 0.99
    s32, s8 = colrag.maxsim(q32, p32), colrag.maxsim(q8, p8)
    assert (s32.argmax(1) == s8.argmax(1)).all()  # top-1 page agrees for every query


def test_dynamic_vision_scheme_quantizes_the_vision_tower_per_tensor(tiny_colqwen2_checkpoint, tiny_retriever_bundle, tmp_path):
    import onnx

    from colrag.bundle import verify_bundle
    from colrag.export.retriever import export_retriever

    bundle = tmp_path / "retriever-dyn"
    export_retriever(tiny_colqwen2_checkpoint, bundle, quantize="int8-dynamic-vision")
    manifest = verify_bundle(bundle, "retriever")  # every file, the new weights included, hashed
    graphs = manifest["quantization"]["graphs"]
    assert graphs["vision"]["method"].startswith("dynamic") and graphs["vision"]["quantized_matmuls"] > 0
    assert graphs["vision"]["min_cosine_vs_fp32"] >= 0.99
    assert graphs["text"]["block_size"] == 128  # the language model stays block-wise
    ops = {name: {n.op_type for n in onnx.load(bundle / f"{name}.onnx", load_external_data=False).graph.node} for name in ("vision", "text")}
    assert "MatMulInteger" in ops["vision"] and "MatMulNBits" not in ops["vision"]
    assert "MatMulNBits" in ops["text"] and "MatMulInteger" not in ops["text"]

    fp32, dyn = colrag.Retriever.load(tiny_retriever_bundle), colrag.Retriever.load(bundle)
    pages = [synthetic_page(640, 820, seed=21), synthetic_page(900, 600, seed=22)]
    for a, b in zip(fp32.embed_images(pages), dyn.embed_images(pages)):
        assert a.shape == b.shape and 0.99 <= cosines(a, b).mean() < 0.999999
