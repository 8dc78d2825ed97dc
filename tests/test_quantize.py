"""Weight-only int8 retriever: close to fp32 colrag on the same pages and queries."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import colrag
from colrag.compare import row_cosines as cosines
from colrag.export import quantize_bundle
from tests.test_retriever import synthetic_page

pytestmark = pytest.mark.slow  # torch: tiny checkpoints, exports or transformers references


@pytest.fixture
def int8_bundle(tiny_retriever_int8_bundle):
    return tiny_retriever_int8_bundle


def test_int8_bundle_is_quantized_and_records_drift(int8_bundle):
    from colrag.vlm.bundle import verify_bundle

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
    for a, b in zip(p32 + q32, p8 + q8, strict=True):
        assert a.shape == b.shape
        assert cosines(a, b).mean() >= 0.99
    s32, s8 = colrag.maxsim(q32, p32), colrag.maxsim(q8, p8)
    assert (s32.argmax(1) == s8.argmax(1)).all()  # top-1 page agrees for every query


def test_dynamic_vision_scheme_quantizes_the_vision_tower_per_tensor(
    tiny_colqwen2_checkpoint, tiny_retriever_bundle, tmp_path
):
    import onnx

    from colrag.export.retriever import export_retriever
    from colrag.vlm.bundle import verify_bundle

    bundle = tmp_path / "retriever-dyn"
    export_retriever(tiny_colqwen2_checkpoint, bundle, quantize="int8-dynamic-vision")
    manifest = verify_bundle(bundle, "retriever")  # every file, the new weights included, hashed
    graphs = manifest["quantization"]["graphs"]
    assert graphs["vision"]["method"].startswith("dynamic") and graphs["vision"]["quantized_matmuls"] > 0
    assert graphs["vision"]["min_cosine_vs_fp32"] >= 0.99
    assert graphs["text"]["block_size"] == 128  # the language model stays block-wise
    ops = {
        name: {n.op_type for n in onnx.load(bundle / f"{name}.onnx", load_external_data=False).graph.node}
        for name in ("vision", "text")
    }
    assert "MatMulInteger" in ops["vision"] and "MatMulNBits" not in ops["vision"]
    assert "MatMulNBits" in ops["text"] and "MatMulInteger" not in ops["text"]

    fp32, dyn = colrag.Retriever.load(tiny_retriever_bundle), colrag.Retriever.load(bundle)
    pages = [synthetic_page(640, 820, seed=21), synthetic_page(900, 600, seed=22)]
    for a, b in zip(fp32.embed_images(pages), dyn.embed_images(pages), strict=True):
        assert a.shape == b.shape and 0.99 <= cosines(a, b).mean() < 0.999999

    # quantizing the fp32 bundle (what the int8 fixture does) gives this export's very files and record
    derived = tmp_path / "derived"
    assert (
        quantize_bundle(tiny_retriever_bundle, derived, "int8-dynamic-vision")["quantization"]
        == manifest["quantization"]
    )
    assert same_files(bundle, derived)


def same_files(a, b) -> bool:
    """Two bundles hold the same files, byte for byte (their manifests' sha256, re-checked by verify_bundle)."""
    from colrag.vlm.bundle import verify_bundle

    files_a, files_b = verify_bundle(a)["files"], verify_bundle(b)["files"]
    return {k: v["sha256"] for k, v in files_a.items()} == {k: v["sha256"] for k, v in files_b.items()}


def test_quantize_bundle_refuses_what_it_cannot_quantize(tiny_retriever_bundle, int8_bundle, tmp_path):
    from colrag.errors import ColragError

    with pytest.raises(ColragError, match="unknown quantization 'int3'"):
        quantize_bundle(tiny_retriever_bundle, tmp_path / "q", "int3")
    with pytest.raises(ColragError, match="already quantized"):
        quantize_bundle(int8_bundle, tmp_path / "q", "int8")
    with pytest.raises(ColragError, match="is the bundle being quantized"):
        quantize_bundle(tiny_retriever_bundle, tiny_retriever_bundle, "int8", force=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("not colrag's")
    with pytest.raises(ColragError, match="not a colrag bundle"):
        quantize_bundle(tiny_retriever_bundle, tmp_path / "notes", "int8", force=True)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "not colrag's"
    assert not (tmp_path / "q").exists()


def _one_matmul_graph(path, k=256, n=64):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
        str(path),
        save_as_external_data=True,
        location=path.name + ".data",
        size_threshold=0,
    )
    return w


@pytest.mark.parametrize("vision, bits", [(False, 4), (True, 8)])
def test_int4_quantizes_only_the_language_model_to_4_bits(tmp_path, vision, bits):
    """int4 pays in the memory-bound decode steps.

    A vision tower stays int8 (int4 there is slower and less accurate)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from colrag.export.quantize import quantize_graph

    src, dst = tmp_path / "g.onnx", tmp_path / "g.q.onnx"
    w = _one_matmul_graph(src)
    stats = quantize_graph(src, dst, "int4", vision=vision)
    assert stats["bits"] == bits and stats["quantized_matmuls"] == 1
    (node,) = onnx.load(str(dst), load_external_data=False).graph.node
    assert node.op_type == "MatMulNBits"
    assert {a.name: a.i for a in node.attribute}["bits"] == bits
    x = np.random.default_rng(1).standard_normal((8, w.shape[0])).astype(np.float32)
    (y,) = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    ref = x @ w
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err < (0.02 if bits == 8 else 0.2) and err > 0  # quantized, and close to fp32 at its bit width
