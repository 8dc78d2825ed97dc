"""How many exactly reranked candidates would recall@5 >= 0.99 need, and what would they cost?

    python bench/experiments/candidates_needed.py 10000 100000   # bench/bench_search.py's indexes of these sizes

For each query of bench_search.py (same queries, same exact top 5), the candidate stage
(colrag.search.centroid_scores at the default NPROBE) ranks every page; a true top-5
page is found only if its candidate rank is below the number of candidates reranked.
This prints, per index size, the candidates that recall@5 of 0.90 / 0.95 / 0.99 needs
(the quantile of those ranks), what reranking that many costs (colrag.search.maxsim_int8
timed on that many stored pages, one BLAS thread), how many bytes it reads, and the time
those bytes take at this machine's measured single-thread read bandwidth (a floor for
any exact kernel, int8 or not).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_search as bs  # noqa: E402

from colrag import search as cs  # noqa: E402
from colrag.store import Index, ann  # noqa: E402

N_QUERIES = 40  # bench_search.py's default: its truth files are reused
RECALLS = (0.90, 0.95, 0.99)


def read_bandwidth_gbs(n_bytes: int = 1 << 30) -> float:
    """Single-thread read bandwidth: sum a 1 GiB array that is not in cache (best of 3)."""
    data = np.ones(n_bytes // 8, dtype=np.uint64)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        data.sum()
        best = max(best, n_bytes / (time.perf_counter() - t) / 1e9)
    return best


def candidate_ranks(index: Index, queries, truth) -> np.ndarray:
    """(n_queries, 5): the candidate-stage rank (0 = first) of each exact top-5 page."""
    snap = index.snapshot()
    ivf = ann.load(index)
    if ivf is None or ivf.generation != snap.generation:
        raise SystemExit(f"{index.path}: no current inverted file; run bench/bench_search.py on it first")
    book = index.codebook(snap)
    by_id = {p.id: p for p in snap.pages}
    position = {(by_id[pid].path, by_id[pid].page_no): i for i, pid in enumerate(ivf.page_ids.tolist()) if pid in by_id}
    ranks = np.zeros((len(queries), 5), dtype=np.int64)
    for qi, (q, top) in enumerate(zip(queries, truth)):
        scores = cs.centroid_scores(q, book.fine, ivf, cs.NPROBE)  # (n_positions,)
        order = np.empty(len(scores), dtype=np.int64)
        order[np.argsort(-scores, kind="stable")] = np.arange(len(scores))  # position -> rank
        ranks[qi] = [order[position[(f, p)]] for f, p, _ in top]
    return ranks


def rerank_ms(index: Index, q: np.ndarray, n: int) -> float:
    snap = index.snapshot()
    rng = np.random.default_rng(0)
    pages = [snap.pages[i] for i in rng.choice(len(snap.pages), size=min(n, len(snap.pages)), replace=False)]
    rows = [index.page_rows(snap, p) for p in pages]
    cs.maxsim_int8(q, rows)  # pages into the page cache
    t = time.perf_counter()
    cs.maxsim_int8(q, rows)
    return (time.perf_counter() - t) * 1000


def main() -> int:
    sizes = [int(x) for x in sys.argv[1:]] or [10000, 100000]
    bw = read_bandwidth_gbs()
    print(f"single-thread read bandwidth: {bw:.1f} GB/s\n")
    print("| pages | recall@5 | candidates needed | rerank measured | bytes read | at read bandwidth |")
    print("|---|---|---|---|---|---|")
    synth = bs.Synth()
    for n_pages in sizes:
        folder = bs.bench_dir() / str(n_pages)
        truth_file = folder.parent / f"{n_pages}.truth.{N_QUERIES}.v2.json"
        if not truth_file.is_file():
            raise SystemExit(f"{truth_file} missing: run `python bench/bench_search.py --sizes {n_pages}` first")
        truth = json.loads(truth_file.read_text())
        with Index.open(folder) as index:
            queries, _ = bs.make_queries(index, synth, N_QUERIES)
            ranks = candidate_ranks(index, queries, truth).reshape(-1)
            stats = index.stats()
            per_page = stats["tokens"] * index.dim / stats["pages"]  # the int8 rows a rerank reads
            for recall in RECALLS:
                need = int(np.quantile(ranks, recall, method="higher")) + 1
                ms = rerank_ms(index, queries[0], need)
                mb = need * per_page / 1e6
                print(f"| {n_pages:,} | {recall:.2f} | {need:,} | {ms:.0f} ms | {mb:,.0f} MB | {mb / 1e3 / bw * 1000:.0f} ms |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
