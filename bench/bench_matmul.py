"""One weight MatMul (a vision-tower MLP shape) in fp32 vs onnxruntime MatMulNBits variants.

    python bench/bench_matmul.py [--shape 1600 1280 5120] [--blocks 32 128 256]

Picks the quantization block size and accuracy level (colrag/export/quantize.py):
best of 5 runs each, 2 intra-op threads, relative error against numpy fp32.
Accuracy level 0 and int4 are measured at blocks 32 and 128 only.
"""

import argparse
import logging
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

logging.disable(logging.INFO)

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--shape", type=int, nargs=3, default=[1600, 1280, 5120], metavar=("M", "K", "N"))
ap.add_argument(
    "--blocks",
    type=int,
    nargs="+",
    default=[32, 128, 256],
    help="int8 accuracy-level-4 block sizes (onnxruntime allows 16-256)",
)
ap.add_argument(
    "--outlier-channels",
    type=int,
    default=0,
    help="scale this many input channels by --outlier-scale (trained transformers have such channels; random "
    "inputs do not)",
)
ap.add_argument("--outlier-scale", type=float, default=30.0)
args = ap.parse_args()
M, K, N = args.shape
W = (np.random.randn(K, N) * 0.02).astype(np.float32)


def model():
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
        [numpy_helper.from_array(W, "W")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


x = np.random.randn(M, K).astype(np.float32)
if args.outlier_channels:
    x[:, np.random.default_rng(0).choice(K, args.outlier_channels, replace=False)] *= args.outlier_scale


def bench(m, name):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = x @ W
    s.run(None, {"x": x})
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        y = s.run(None, {"x": x})[0]
        ts.append(time.perf_counter() - t)
    t = min(ts)
    print(
        f"{name:30s} {t * 1e3:7.1f} ms  {2 * M * K * N / t / 1e9:6.0f} GOP/s  "
        f"relerr {np.abs(y - ref).max() / np.abs(ref).max():.2e}"
    )


bench(model(), "fp32")
for bits in (8, 4):
    for acc in (0, 4):
        for bs in args.blocks if (bits, acc) == (8, 4) else (32, 128):
            if bs > K:
                continue
            cfg = DefaultWeightOnlyQuantConfig(block_size=bs, is_symmetric=True, accuracy_level=acc or None, bits=bits)
            q = MatMulNBitsQuantizer(model(), algo_config=cfg)
            q.process()
            bench(q.model.model, f"int{bits} acc{acc} bs{bs}")


with (
    tempfile.TemporaryDirectory() as tmp
):  # the int8-dynamic-vision scheme: per-channel weights, per-tensor activations
    onnx.save(model(), f"{tmp}/m.onnx")
    quantize_dynamic(f"{tmp}/m.onnx", f"{tmp}/q.onnx", per_channel=True, weight_type=QuantType.QInt8)
    bench(onnx.load(f"{tmp}/q.onnx"), "dynamic int8 (per-tensor act.)")
