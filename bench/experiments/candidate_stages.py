"""Negative result, kept so it can be re-run: two candidate stages that did not raise recall@5.

    python bench/experiments/candidate_stages.py 10000    # needs bench/bench_search.py's index of that size

(a) "impute": a page that holds none of a query token's probed centroids gets that
    token's worst probed centroid score instead of 0 (XTR-style missing-similarity
    imputation), at several nprobe / candidate settings;
(b) "codes": the first stage keeps C1 pages, a middle stage ranks them by approximate
    MaxSim from every stored token's centroid code (PLAID stage 3 without pruning),
    and the best 256 go to the exact rerank.
Results at 10,000 synthetic pages, 40 queries (2026-12-01) are in docs/INDEX_FORMAT.md,
"Not done yet". Both swap colrag.search functions in this process only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_search as bs  # noqa: E402

import colrag.search as cs  # noqa: E402


def imputed_centroid_scores(q, centroids, ivf, nprobe):
    """colrag.search.centroid_scores with the worst probed score instead of 0 for a missing token."""
    sim = q @ centroids.T  # (n_q, n_centroids)
    n_q = len(q)
    nprobe = min(nprobe, sim.shape[1])
    probe = np.argpartition(-sim, nprobe - 1, axis=1)[:, :nprobe]
    probe_sim = np.take_along_axis(sim, probe, axis=1)
    rank = np.argsort(-probe_sim, axis=1)
    probe = np.take_along_axis(probe, rank, axis=1)
    probe_sim = np.take_along_axis(probe_sim, rank, axis=1)
    best = np.empty((len(ivf.page_ids), n_q), dtype=np.float32)
    best[:] = probe_sim[:, -1][None, :]
    flat = best.reshape(-1)
    for r in range(nprobe - 1, -1, -1):
        lists = [ivf.entries[ivf.offsets[c] : ivf.offsets[c + 1]] for c in probe[:, r]]
        sizes = np.fromiter((len(x) for x in lists), dtype=np.int64, count=n_q)
        if not sizes.sum():
            continue
        pos = np.concatenate(lists).astype(np.int64)
        flat[pos * n_q + np.repeat(np.arange(n_q), sizes)] = np.repeat(probe_sim[:, r], sizes)
    return best.sum(axis=1)


def with_code_stage(keep: int, times: list):
    first_stage = cs.Searcher.candidates
    codes_of: dict = {}

    def candidates(self, q, top_k):
        pages = first_stage(self, q, top_k)
        snap = self._current_view().snap
        t = time.perf_counter()
        s_t = np.ascontiguousarray((q @ self.index.codebook(snap).fine.T).T)  # (n_centroids, n_q)
        codes = [codes_of.setdefault(p.id, self.index.page_codes(snap, p).astype(np.int64)) for p in pages]
        starts = np.cumsum([0] + [len(c) for c in codes[:-1]])
        approx = np.maximum.reduceat(s_t[np.concatenate(codes)], starts, axis=0).sum(axis=1)  # (n_pages,)
        times.append(time.perf_counter() - t)
        return [pages[i] for i in np.argsort(-approx)[:keep]]

    return candidates


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    original_scores, original_candidates = cs.centroid_scores, cs.Searcher.candidates
    sweep = [(8, 256), (16, 256), (32, 256), (8, 512), (32, 512)]
    for name, fn in (("zero (colrag)", original_scores), ("impute", imputed_centroid_scores)):
        cs.centroid_scores = fn
        res = bs.run_size(n, 40, 1, None, None, sweep)
        print(name, [(r["nprobe"], r["candidates"], round(r["recall5"], 3), round(r["p50_ms"], 1)) for r in res["sweep"]], flush=True)
    cs.centroid_scores = original_scores
    for c1 in (1024, 2048, 4096):
        times: list = []
        cs.Searcher.candidates = with_code_stage(256, times)
        r = bs.run_size(n, 40, 1, None, None, [(8, c1)])["sweep"][0]
        cs.Searcher.candidates = original_candidates
        print(f"codes: first stage {c1} -> 256: recall@5 {r['recall5']:.3f}, p50 {r['p50_ms']:.1f} ms "
              f"(middle stage {1000 * np.median(times):.1f} ms)", flush=True)


if __name__ == "__main__":
    main()
