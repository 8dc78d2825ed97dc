"""How good is the candidate stage alone? Candidate-set recall of candidate scoring rules on a bench index.

    python bench/experiments/candidate_stage.py --corpus clustered --pages 10000 [--nprobe 8 16] [--sizes 128 256 512]

On an index built by bench/bench_search.py (and its cached exact float32 scores), for each
query and each rule, the best N pages by the rule's score are the candidates; the measure is
the best tie-tolerant recall@5 an exact rerank of them could reach: min(5, candidates whose
exact score is >= the exact 5th minus 1 %) / 5. Rules:

  probed-zero   colrag's rule before 2026-12-02: per query token, the best probed centroid the
                page holds (NPROBE per token), 0 when it holds none; summed over tokens
  probed-next   the same, but a token none of whose probed centroids the page holds scores the
                score of its next (NPROBE+1-th) centroid (an upper bound of what it could score)
  full          centroid interaction over every centroid the page holds (PLAID's approximation of
                MaxSim: each page token replaced by its centroid), all pages scored
  two-step M    probed-next's best M pages, re-scored by `full`
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_search as bs  # noqa: E402

from colrag.search import Searcher, centroid_scores  # noqa: E402
from colrag.store import Index, coarse  # noqa: E402
from colrag.store import catalog as cat  # noqa: E402


def full_scores(sim: np.ndarray, flat_ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """sim (n_q, K) query-centroid scores; pages' centroid ids concatenated (flat_ids, page starts)."""
    per = np.maximum.reduceat(sim[:, flat_ids], starts, axis=1)  # (n_q, n_pages)
    return per.sum(axis=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="neartie", choices=sorted(bs.CORPORA))
    ap.add_argument("--pages", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--two-step", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument(
        "--adaptive",
        type=float,
        nargs="*",
        default=[],
        help="also: probed-zero candidates = pages within this share of the 5th best approximate score, "
        "at least the smallest --sizes, at most the largest",
    )
    args = ap.parse_args()
    folder = bs.index_folder(args.corpus, args.pages)
    gen = bs.CORPORA[args.corpus]()
    with Index.open(folder) as index:
        snap = index.snapshot()
        queries, _ = gen.queries(args.pages, args.queries)
        numbers = np.array([bs.page_number(p.path, p.page_no) for p in snap.pages], dtype=np.int64)
        exact = bs.exact_scores(folder, numbers, gen, queries)
        quantizer = index.coarse_quantizer(snap)
        cents = coarse.centroids(quantizer)  # (K, dim)
        searcher = Searcher(index, None)
        view = searcher._current_view()
        searcher._attach_lists(view)
        ids_sorted, order = view.ids_sorted, view.order
        sets = dict(cat.visible_page_centroids(index.conn))
        per_page = [coarse.unpack(sets[p.id]).astype(np.int64) for p in snap.pages]  # snapshot order
        flat_ids = np.concatenate(per_page)
        starts = np.cumsum([0] + [len(s) for s in per_page[:-1]])
        print(f"centroids per page: mean {np.mean([len(s) for s in per_page]):.0f}", file=sys.stderr)
        results: dict[str, list[float]] = {}
        timing: dict[str, list[float]] = {}
        counts: dict[str, list[int]] = {}
        fifth = -np.partition(-exact, 4, axis=1)[:, 4]
        for qi, q in enumerate(queries):
            good = exact[qi] >= fifth[qi] * (1 - bs.TIE)

            def record(rule: str, score: np.ndarray, sec: float, good: np.ndarray = good) -> None:
                for n in args.sizes:
                    best = np.argpartition(-score, n - 1)[:n]
                    results.setdefault(f"{rule} | {n}", []).append(min(5, int(good[best].sum())) / 5)
                timing.setdefault(rule, []).append(sec)

            sim = q @ cents.T  # (n_q, K)
            t = time.perf_counter()
            full = full_scores(sim, flat_ids, starts)
            record("full", full, time.perf_counter() - t)
            for nprobe in args.nprobe:
                s_all, c_all = quantizer.search(np.ascontiguousarray(q), nprobe + 1)
                for mode in ("zero", "next"):
                    t = time.perf_counter()
                    fill = s_all[:, nprobe] if mode == "next" else None
                    sc = centroid_scores(view.lists, c_all[:, :nprobe], s_all[:, :nprobe], ids_sorted, fill)
                    score = np.full(len(snap.pages), -np.inf, dtype=np.float32)
                    score[order] = sc  # back to snapshot order
                    record(f"probed-{mode} nprobe {nprobe}", score, time.perf_counter() - t)
                    if mode == "zero":
                        kth = -np.partition(-score, 4)[4]
                        for share in args.adaptive:
                            n = int(np.clip((score >= kth * (1 - share)).sum(), min(args.sizes), max(args.sizes)))
                            best = np.argpartition(-score, n - 1)[:n]
                            key = f"adaptive {share} (nprobe {nprobe})"
                            results.setdefault(key, []).append(min(5, int(good[best].sum())) / 5)
                            counts.setdefault(key, []).append(n)
                    if mode == "next":
                        for m in args.two_step:
                            t = time.perf_counter()
                            top = np.argpartition(-score, m - 1)[:m]
                            sub = [per_page[i] for i in top]
                            two = np.full(len(snap.pages), -np.inf, dtype=np.float32)
                            two[top] = full_scores(
                                sim, np.concatenate(sub), np.cumsum([0] + [len(s) for s in sub[:-1]])
                            )
                            record(f"two-step {m} (nprobe {nprobe})", two, time.perf_counter() - t)
        print(f"\n{args.corpus}, {len(snap.pages):,} pages, {len(queries)} queries, load {os.getloadavg()[0]:.1f}")
        print("| rule | " + " | ".join(f"{n} cand." for n in args.sizes) + " | extra ms / query (p50) |")
        print("|---" * (len(args.sizes) + 2) + "|")
        for rule in timing:
            cells = [f"{np.mean(results[f'{rule} | {n}']):.3f}" for n in args.sizes]
            print(f"| {rule} | " + " | ".join(cells) + f" | {1000 * np.median(timing[rule]):.1f} |")
        for key, ns in counts.items():
            print(
                f"| {key} | tie recall of the candidates {np.mean(results[key]):.3f} | candidates: "
                f"mean {np.mean(ns):.0f}, median {np.median(ns):.0f}, max {max(ns)} |"
            )
        print(json.dumps({k: float(np.mean(v)) for k, v in results.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
