"""Memory bandwidth this process reaches, to state the floor of a memory-bound decode step.

    flock /tmp/colrag-heavy.lock python bench/bench_membw.py [--gib 2] [--threads 1 2] [--runs 5]

A decode step of the generator reads every weight of the language model once (int8: ~1.54 GB;
4-bit: ~0.78 GB) and does ~2 operations per weight byte, far below what the int8 units do: its
floor is bytes / bandwidth. Three ways to stream a `--gib` float32 array (far larger than the
caches), each split over `--threads` threads (numpy releases the GIL in these loops):

- read: np.add.reduce of each thread's slice (read only, what the weights see);
- dot: a float32 matrix-vector product of the array as (rows, 4096) through BLAS (read only,
  vectorised the way a GEMV kernel is);
- copy: np.copyto into a second array of the same size (GB/s counts the bytes read + written).

Best of `--runs` (the machine is shared: the best run is the least disturbed one).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # the threads here split the array; BLAS threads on top would oversubscribe

import numpy as np  # noqa: E402  (after the thread settings)


def timed(threads: int, parts: list, work: Callable[[tuple], object], runs: int) -> float:
    """Best wall time of running work on every part, on `threads` threads."""
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(runs):
            t = time.perf_counter()
            list(pool.map(work, parts))
            best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = int(args.gib * 2**30) // 4 // 4096 * 4096
    src = np.ones(n, np.float32)  # written once: every page is touched before timing
    dst = np.zeros_like(src)
    vec = np.ones(4096, np.float32)
    nbytes = src.nbytes
    print(f"load {os.getloadavg()}; array {nbytes / 1e9:.2f} GB float32")
    print("| threads | read (np.add.reduce) GB/s | read (BLAS GEMV) GB/s | copy GB/s (read + write) |")
    print("|---|---|---|---|")
    rows, out = src.reshape(-1, 4096), dst.reshape(-1, 4096)
    for threads in args.threads:
        step = -(-rows.shape[0] // (threads * 8))  # 8 slices per thread
        slices = [slice(i, i + step) for i in range(0, rows.shape[0], step)]
        parts = [(rows[s], out[s]) for s in slices]
        r = nbytes / timed(threads, parts, lambda p: np.add.reduce(p[0], axis=None), args.runs) / 1e9
        g = nbytes / timed(threads, parts, lambda p: p[0] @ vec, args.runs) / 1e9
        c = 2 * nbytes / timed(threads, parts, lambda p: np.copyto(p[1], p[0]), args.runs) / 1e9
        print(f"| {threads} | {r:.1f} | {g:.1f} | {c:.1f} |", flush=True)
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
