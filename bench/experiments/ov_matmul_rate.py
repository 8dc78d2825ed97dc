"""One vision-sized MatMul (1600x1280 @ 1280x5120) on OpenVINO's CPU plugin, bf16 and f32 hints, 2 threads.

    python bench/experiments/ov_matmul_rate.py

What the hardware gives OpenVINO for the big weight MatMuls (best and median of 10 runs).
"""

from __future__ import annotations

import time

import numpy as np
import openvino as ov
from openvino import opset13 as ops

M, K, N = 1600, 1280, 5120


def main() -> None:
    x = ops.parameter([M, K], np.float32, name="x")
    w = ops.constant(np.random.default_rng(0).standard_normal((K, N)).astype(np.float32))
    model = ov.Model([ops.matmul(x, w, False, False)], [x])
    core = ov.Core()
    a = np.random.default_rng(1).standard_normal((M, K)).astype(np.float32)
    for precision in ("bf16", "f32"):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": 2})
        request = compiled.create_infer_request()
        request.infer({0: a})
        times = []
        for _ in range(10):
            t = time.perf_counter()
            request.infer({0: a})
            times.append(time.perf_counter() - t)
        flop = 2 * M * K * N
        print(
            f"{precision}: {flop / min(times) / 1e9:.0f} GFLOP/s best of 10, median {flop / np.median(times) / 1e9:.0f}"
        )


if __name__ == "__main__":
    main()
