"""One weight MatMul (a vision-tower MLP shape) in fp32 vs onnxruntime MatMulNBits variants.

    python bench/bench_matmul.py

Picks the quantization block size and accuracy level (colrag/export/quantize.py):
best of 5 runs each, 2 intra-op threads, relative error against numpy fp32.
"""
import time, numpy as np, onnx, onnxruntime as ort, logging
from onnx import helper, TensorProto, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
logging.disable(logging.INFO)
M, K, N = 1600, 1280, 5120
W = (np.random.randn(K, N) * 0.02).astype(np.float32)
def model():
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
        [numpy_helper.from_array(W, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
x = np.random.randn(M, K).astype(np.float32)
def bench(m, name):
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = x @ W
    s.run(None, {"x": x})
    ts = []
    for _ in range(5):
        t = time.perf_counter(); y = s.run(None, {"x": x})[0]; ts.append(time.perf_counter() - t)
    t = min(ts); print(f"{name:22s} {t*1e3:7.1f} ms  {2*M*K*N/t/1e9:6.0f} GOP/s  relerr {np.abs(y-ref).max()/np.abs(ref).max():.2e}")
bench(model(), "fp32")
for bits in (8, 4):
    for acc in (0, 4):
        for bs in (32, 128):
            cfg = DefaultWeightOnlyQuantConfig(block_size=bs, is_symmetric=True, accuracy_level=acc or None, bits=bits)
            q = MatMulNBitsQuantizer(model(), algo_config=cfg); q.process()
            bench(q.model.model, f"int{bits} acc{acc} bs{bs}")
