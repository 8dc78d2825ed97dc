"""Weight-only, block-wise quantization of an exported graph (onnxruntime MatMulNBits).

Only MatMuls whose weight is a constant are touched; activations stay fp32 (fp16
overflows in Qwen2-VL, and per-tensor dynamic activation quantization moved logits
far, see docs/BENCHMARKS.md). Each block of `block_size` weights along the input
dimension gets its own scale, so outliers cost one block, not a whole row.
accuracy_level 4 lets onnxruntime compute with int8 activations per block (VNNI),
which is where the speed comes from on CPUs.

`int8-dynamic-vision` keeps that for the language model but quantizes the vision
tower's MatMuls with onnxruntime's dynamic scheme instead (MatMulInteger: int8 weights
per output channel, activations quantized per tensor at run time): ≈ 1.9× the MatMul
rate, vision tower 16.9 s vs 22.2 s on a page here, at a somewhat larger error
(bench/experiments/vision_dynamic_int8.py). One scale per activation tensor is fragile
with outlier activations, which random weights do not have: it is opt-in, to be
checked with `colrag models compare` on the real weights.
"""

from __future__ import annotations

import gc
from pathlib import Path

# name: (bits, block_size). Block 128 with accuracy_level 4: on a 1600x1280x5120 MatMul
# (2 cores, AVX512-VNNI) int8 ran at 352 GOP/s against 131 for fp32 and 190 with block 32,
# relative error 0.9% (int4: 365 GOP/s, 9%). Measured with bench/bench_matmul.py.
QUANT_SCHEMES = {
    "int8": (8, 128),
    "int4": (4, 128),
    "int8-dynamic-vision": (8, 128),  # (bits, block) of the language model; the vision tower: see above
}
# The vision tower of a weight-only scheme is always int8: it runs ~3,000 patches at once
# (compute-bound), where int4 weights are no faster (291-332 vs 314-385 GOP/s over three
# runs) and ~10x less accurate (rel. error 9.8e-2 vs 8.5e-3, bench/bench_matmul.py). int4
# pays only where weight bytes count: the generator's one-token decode steps (1.3x,
# docs/BENCHMARKS.md).
VISION_WEIGHT_ONLY = (8, 128)
DYNAMIC_VISION_SCHEMES = ("int8-dynamic-vision",)
# The one default of `colrag models install` and `colrag models export`: weight-only int8
# (embedding cosine >= 0.997 vs fp32 on random weights, ~1.8x faster matmuls). The library's
# export functions keep fp32 unless told (the parity tests compare fp32 graphs).
DEFAULT_QUANTIZE = "int8"
QUANTIZE_HELP = (
    "Quantization of the exported graphs: int8 (the default: weight-only, block-wise; about 1.8x faster than fp32, "
    "embedding cosine >= 0.997 vs fp32 on random weights), int4 (4-bit language-model weights, int8 vision: faster "
    "decoding, more drift), int8-dynamic-vision (int8, vision tower on dynamic int8 activations: pages ~20% faster, "
    "larger drift; check it with `colrag models compare`), or none (fp32). The drift vs fp32 is recorded in "
    "the manifest."
)


def _gemm_to_matmul(model) -> int:
    """Rewrite Gemm(x, W, b, transB=1) with constant W as MatMul(x, W^T) + b, so it can be quantized."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    new_nodes, changed = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        w_name = node.input[1] + "_kn"
        model.graph.initializer.append(numpy_helper.from_array(w, w_name))
        mm_out = node.output[0] + "_mm" if len(node.input) > 2 else node.output[0]
        new_nodes.append(
            helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=(node.name or "gemm") + "_matmul")
        )
        if len(node.input) > 2 and node.input[2]:
            new_nodes.append(
                helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=(node.name or "gemm") + "_bias")
            )
        changed += 1
    if changed:
        used = {i for n in new_nodes for i in n.input}
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        keep = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return changed


def quantize_graph(
    src: Path, dst: Path, scheme: str = "int8", accuracy_level: int = 4, *, vision: bool = False
) -> dict:
    """Quantize `src` (ONNX with external data) into `dst` (+ dst.data). Returns counts for the manifest.

    vision: this is a vision tower graph (some schemes treat it differently).
    """
    if vision and scheme in DYNAMIC_VISION_SCHEMES:
        return _quantize_dynamic(src, dst, scheme)
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    bits, block = VISION_WEIGHT_ONLY if vision else QUANT_SCHEMES[scheme]
    model = onnx.load(str(src), load_external_data=True)
    rewritten = _gemm_to_matmul(model)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, accuracy_level=accuracy_level, bits=bits, op_types_to_quantize=("MatMul",)
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    qmodel = quantizer.model.model
    n_quant = sum(1 for n in qmodel.graph.node if n.op_type == "MatMulNBits")
    del quantizer, model
    gc.collect()
    dst.unlink(missing_ok=True)
    Path(str(dst) + ".data").unlink(missing_ok=True)
    onnx.save_model(
        qmodel,
        str(dst),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=dst.name + ".data",
        size_threshold=1024,
    )
    return {
        "scheme": scheme,
        "bits": bits,
        "block_size": block,
        "accuracy_level": accuracy_level,
        "quantized_matmuls": n_quant,
        "gemm_rewritten": rewritten,
    }


def _quantize_dynamic(src: Path, dst: Path, scheme: str) -> dict:
    """MatMulInteger with per-channel int8 weights; activations quantized per tensor at run time."""
    import logging
    import os

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    dst.unlink(missing_ok=True)
    data = Path(str(dst) + ".data")
    data.unlink(missing_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic "consider pre-processing" warning on the root logger
    try:
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
        )
    finally:
        root.setLevel(level)
    if data.exists():
        os.chmod(data, 0o644)  # written 0600; bundles are meant to be shared read-only
    model = onnx.load(str(dst), load_external_data=False)
    n_quant = sum(1 for n in model.graph.node if n.op_type == "MatMulInteger")
    return {
        "scheme": scheme,
        "method": "dynamic: MatMulInteger, int8 weights per channel, activations per tensor",
        "bits": 8,
        "quantized_matmuls": n_quant,
    }
