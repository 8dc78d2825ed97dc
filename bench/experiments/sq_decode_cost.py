"""Decode cost of FAISS scalar quantizers vs colrag's SQ8 widen, for a rerank of 256 pages of 783 tokens (one thread).

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python bench/experiments/sq_decode_cost.py

What a 6- or 4-bit layout would add to every search: its codes must be unpacked (FAISS
sa_decode) before the product, where SQ8 codes are widened by numpy and decoded after it.
"""

import time

import faiss
import numpy as np

faiss.omp_set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.standard_normal((256 * 783, 128)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
q = rng.standard_normal((25, 128)).astype(np.float32)


def tm(f, n=3):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return 1000 * min(ts)


for name, qt in (
    ("SQ8", faiss.ScalarQuantizer.QT_8bit),
    ("SQ6", faiss.ScalarQuantizer.QT_6bit),
    ("SQ4", faiss.ScalarQuantizer.QT_4bit),
):
    ix = faiss.IndexScalarQuantizer(128, qt, faiss.METRIC_INNER_PRODUCT)
    ix.train(np.stack([np.full(128, -1, np.float32), np.full(128, 1, np.float32)]))
    codes = ix.sa_encode(x)
    dec = tm(lambda ix=ix, codes=codes: ix.sa_decode(codes))
    xd = ix.sa_decode(codes)
    gemm = tm(lambda xd=xd: xd @ q.T)
    print(f"{name}: {codes.shape[1]} B/token, FAISS sa_decode of 256 pages {dec:.1f} ms, product {gemm:.1f} ms")
c8 = np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)
buf = np.empty(c8.shape, np.float32)
print(f"SQ8 widen (numpy copyto, colrag's kernel) {tm(lambda: np.copyto(buf, c8, casting='unsafe')):.1f} ms")
