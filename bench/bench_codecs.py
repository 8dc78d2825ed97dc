"""Which vector codec should the index store? Size, speed, recall and score drift of candidate layouts.

    python bench/bench_codecs.py --pages 2000 --corpus neartie clustered
    flock /tmp/colrag-heavy.lock python bench/bench_codecs.py --pages 10000

Everything runs in memory on synthetic pages (no index folder is written), so that every
layout sees the same vectors, the same queries and the same candidate pages:

  1. pages: `neartie` is bench/bench_search.py's generator (24 popular concepts per page,
     the near-tied set of docs/INDEX_FORMAT.md); `clustered` makes pages that are mixtures
     of 2-4 of 256 topics (each topic: 16 concepts), with queries whose 20 content tokens
     are drawn from one page's topics (not copied from its tokens), so many pages share a
     query's topics and the best ones are separated by how much of each topic they hold.
     Every page: 768 image + 15 prompt tokens, 128 dims, unit rows (the ColQwen2 shape).
  2. exact truth: float32 MaxSim of every query against every page (brute force).
  3. candidate stage (shared by every layout): FAISS k-means (trained through an
     IndexIVFFlat's `train`, spherical) gives `--nlist` centroids; each token's centroid is
     FAISS's assignment (quantizer.search); the page lists (centroid -> pages holding a token
     of it) are scored PLAID-style as colrag.search.centroid_scores does; the best
     `--candidates` pages go to the rerank.
  4. rerank, per layout: the candidates' rows decoded from that layout's codes, MaxSim in
     float32; the reported score is that MaxSim.

Layouts (bytes per token: the code, plus 2 for the centroid id the candidate lists need
where the code does not hold it already):
  fp32       float32 rows: the oracle (recall of the candidate stage alone)
  int8       today's schema 2: int8 row, max |x| -> 127, unit norm implied (128 + 2 B)
  SQ8        FAISS IndexScalarQuantizer QT_8bit, per-dimension range (128 + 2 B)
  SQ8 [-1,1] QT_8bit with a fixed range: no training, so it encodes an index's first page (128 + 2 B)
  SQ6, SQ4   FAISS QT_6bit (96 + 2 B), QT_4bit (64 + 2 B)
  IVF-SQ<b>  FAISS IndexIVFScalarQuantizer on the same centroids, by residual, b bits per dim
             (sa_encode = centroid id + code)
  IVF-PQ<m>  FAISS IndexIVFPQ on the same centroids, residual, m sub-quantizers of 8 bits:
             sa_encode = centroid id (2 B) + m B of PQ code; decoded as centroid + PQ residual

Metrics, per layout: tie-tolerant recall@5 (a returned page counts when its exact float32
score is >= the exact 5th-best score minus 1 % of it), strict recall@5 (the same pages as the
exact top 5), score drift (|reported - exact| / exact over returned pages: p99 and max),
bytes per page (codes + page lists at FAISS's 8-byte ids + codec files amortised), rerank
time per query (FAISS sa_decode + float32 MaxSim of the candidates, one thread; p50), train and encode time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one-thread BLAS, as colrag's search path
os.environ.setdefault("OMP_NUM_THREADS", "1")

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_search as bs  # noqa: E402  (after the sys.path line: runs as a script)

DIM = 128
TOKENS = bs.IMAGE_TOKENS + bs.TEXT_TOKENS
TRAIN_ROWS = 1 << 18
TIE = 0.01


def quantize(x: np.ndarray) -> np.ndarray:
    """Schema 2's int8 rows: each row scaled so that max |x| -> 127."""
    x = np.asarray(x, dtype=np.float32)
    return np.rint(x * (127.0 / np.abs(x).max(axis=1, keepdims=True))).astype(np.int8)


def dequantize(q: np.ndarray) -> np.ndarray:
    """Schema 2's decode: the int8 row, renormalised (x = q / ||q||)."""
    x = np.asarray(q, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


Topics = bs.Topics  # the `clustered` corpus: pages mixing 2-4 of 256 topics (bench_search.py)


def corpus(kind: str, n_pages: int, n_queries: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(n_pages, TOKENS, DIM) float32 pages and the queries."""
    x = np.empty((n_pages, TOKENS, DIM), dtype=np.float32)
    gen = bs.Synth() if kind == "neartie" else Topics()
    for start in range(0, n_pages, 250):
        k = min(250, n_pages - start)
        x[start : start + k] = np.stack(gen.pages(start, k))
    rng = np.random.default_rng(7)
    queries = []
    for i in range(n_queries):
        page = int(rng.integers(n_pages))
        if kind == "neartie":
            queries.append(gen.random_query(rng) if i % 4 == 3 else gen.page_query(rng, x[page]))
        else:
            queries.append(gen.query(rng, page))
    return x, queries


def exact_scores(x: np.ndarray, queries: list[np.ndarray], step: int = 64) -> np.ndarray:
    """(n_queries, n_pages) float32 MaxSim over the float32 rows."""
    q_all = np.concatenate(queries)  # (sum n_q, dim)
    q_starts = np.cumsum([0] + [len(q) for q in queries[:-1]])
    out = np.empty((len(queries), len(x)), dtype=np.float32)
    for s in range(0, len(x), step):
        block = x[s : s + step]  # (b, T, dim)
        sim = block.reshape(-1, DIM) @ q_all.T  # (b*T, sum n_q)
        per_page = sim.reshape(len(block), TOKENS, -1).max(axis=1)  # (b, sum n_q)
        out[:, s : s + len(block)] = np.add.reduceat(per_page, q_starts, axis=1).T
    return out


def train_centroids(sample: np.ndarray, nlist: int) -> faiss.Index:
    """Spherical k-means through an IVF index's train (faiss.Kmeans fails once pymupdf is loaded)."""
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.spherical = True
    ivf.cp.niter = 10
    ivf.cp.max_points_per_centroid = 64
    ivf.train(sample)
    quantizer = faiss.IndexFlatIP(DIM)
    quantizer.add(ivf.quantizer.reconstruct_n(0, nlist))
    return quantizer


class PageLists:
    """centroid -> pages holding a token of it (CSR), from FAISS's assignment of every token."""

    def __init__(self, assign: np.ndarray, nlist: int):  # assign: (n_pages, T)
        n_pages = len(assign)
        key = np.unique(np.arange(n_pages, dtype=np.int64)[:, None] * nlist + assign)  # page-major unique pairs
        cents, pages = key % nlist, key // nlist
        order = np.argsort(cents, kind="stable")
        self.entries = pages[order].astype(np.uint32)
        self.offsets = np.zeros(nlist + 1, dtype=np.int64)
        np.cumsum(np.bincount(cents, minlength=nlist), out=self.offsets[1:])
        self.n_pages = n_pages


def candidate_scores(q: np.ndarray, centroids: np.ndarray, lists: PageLists, nprobe: int) -> np.ndarray:
    """PLAID centroid interaction, as colrag.search.centroid_scores."""
    sim_t = centroids @ q.T  # (nlist, n_q)
    n_q = len(q)
    probe = np.argpartition(-sim_t, nprobe - 1, axis=0)[:nprobe].T  # (n_q, nprobe): each token's best centroids
    probe_sim = np.take_along_axis(sim_t.T, probe, axis=1)
    rank = np.argsort(-probe_sim, axis=1)
    probe = np.take_along_axis(probe, rank, axis=1)
    probe_sim = np.take_along_axis(probe_sim, rank, axis=1)
    best = np.zeros((lists.n_pages, n_q), dtype=np.float32)
    flat = best.reshape(-1)
    for r in range(nprobe - 1, -1, -1):
        ls = [lists.entries[lists.offsets[c] : lists.offsets[c + 1]] for c in probe[:, r]]
        sizes = np.fromiter((len(a) for a in ls), dtype=np.int64, count=n_q)
        if not sizes.sum():
            continue
        pos = np.concatenate(ls).astype(np.int64)
        flat[pos * n_q + np.repeat(np.arange(n_q), sizes)] = np.repeat(probe_sim[:, r], sizes)
    return best.sum(axis=1)


class Layout:
    name = ""
    code_bytes = 0  # per token, centroid id included
    codec_bytes = 0  # trained tables, once per index
    tokens = TOKENS  # stored rows per page

    def train(self, sample: np.ndarray, quantizer: faiss.Index) -> None: ...

    def encode(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, codes: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Fp32(Layout):
    name, code_bytes = "fp32 (oracle)", 4 * DIM + 2

    def encode(self, rows):
        return rows

    def decode(self, codes):
        return codes


class Int8(Layout):
    name, code_bytes = "int8 rows (schema 2)", DIM + 2

    def encode(self, rows):
        return quantize(rows)

    def decode(self, codes):
        return dequantize(codes)


class SQ(Layout):
    def __init__(self, bits: int):
        self.bits = bits
        self.name = f"SQ{bits}"
        self.code_bytes = DIM * bits // 8 + 2
        self.codec_bytes = 2 * DIM * 4

    def train(self, sample, quantizer):
        qt = {8: faiss.ScalarQuantizer.QT_8bit, 6: faiss.ScalarQuantizer.QT_6bit, 4: faiss.ScalarQuantizer.QT_4bit}[
            self.bits
        ]
        self.index = faiss.IndexScalarQuantizer(DIM, qt, faiss.METRIC_INNER_PRODUCT)
        self.index.train(sample)

    def encode(self, rows):
        return self.index.sa_encode(rows)

    def decode(self, codes):
        return self.index.sa_decode(codes)


class IvfPq(Layout):
    """Residual PQ on the candidate stage's centroids; decode = centroid + PQ residual."""

    def __init__(self, m: int):
        self.m = m
        self.name = f"IVF-PQ{m} (residual)"

    def train(self, sample, quantizer):
        nlist = quantizer.ntotal
        self.index = faiss.IndexIVFPQ(quantizer, DIM, nlist, self.m, 8, faiss.METRIC_INNER_PRODUCT)
        self.index.pq.cp.niter = 10
        self.index.train(sample)  # the quantizer is trained (ntotal == nlist): only the PQ trains
        self.code_bytes = self.index.sa_code_size()
        self.codec_bytes = nlist * DIM * 4 + self.m * 256 * (DIM // self.m) * 4

    def encode(self, rows):
        return self.index.sa_encode(rows)

    def decode(self, codes):
        return self.index.sa_decode(codes)


class SQ8Fixed(Layout):
    """QT_8bit with the range fixed to [-1, 1] for every dimension: needs no data to train
    (unit rows never leave it), so an index can encode its very first page."""

    name, code_bytes = "SQ8, range [-1, 1] (untrained)", DIM + 2

    def train(self, sample, quantizer):
        self.index = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        self.index.train(np.stack([np.full(DIM, -1.0, np.float32), np.full(DIM, 1.0, np.float32)]))

    def encode(self, rows):
        return self.index.sa_encode(rows)

    def decode(self, codes):
        return self.index.sa_decode(codes)


class IvfSq(Layout):
    """Residual scalar quantizer on the candidate stage's centroids (IndexIVFScalarQuantizer)."""

    def __init__(self, bits: int):
        self.bits = bits
        self.name = f"IVF-SQ{bits} (residual)"

    def train(self, sample, quantizer):
        qt = {8: faiss.ScalarQuantizer.QT_8bit, 6: faiss.ScalarQuantizer.QT_6bit, 4: faiss.ScalarQuantizer.QT_4bit}[
            self.bits
        ]
        self.index = faiss.IndexIVFScalarQuantizer(
            quantizer, DIM, quantizer.ntotal, qt, faiss.METRIC_INNER_PRODUCT, True
        )
        self.index.train(sample)
        self.code_bytes = self.index.sa_code_size()
        self.codec_bytes = quantizer.ntotal * DIM * 4 + 2 * DIM * 4

    def encode(self, rows):
        return self.index.sa_encode(rows)

    def decode(self, codes):
        return self.index.sa_decode(codes)


class PooledSQ8(SQ8Fixed):
    """Token pooling (as ColPali's hierarchical token pooling, with k-means): each page's 783 rows are
    clustered into 783 // factor groups (FAISS spherical k-means on the page, 10 iterations) and each
    group is stored as its mean, renormalised, in SQ8 [-1, 1]: factor x fewer rows per page. MaxSim then
    runs over the pooled rows (an approximation of MaxSim over the page's own tokens). The candidate
    stage here stays the unpooled one (shared by every layout)."""

    def __init__(self, factor: int):
        self.factor = factor
        self.tokens = TOKENS // factor
        self.name = f"SQ8 [-1, 1], tokens pooled /{factor} (k-means per page)"

    def encode_page(self, rows: np.ndarray) -> np.ndarray:
        km = faiss.Kmeans(DIM, self.tokens, niter=10, spherical=True, seed=1, min_points_per_centroid=1)
        km.train(np.ascontiguousarray(rows))
        _, assign = km.index.search(np.ascontiguousarray(rows), 1)
        sums = np.zeros((self.tokens, DIM), dtype=np.float32)
        np.add.at(sums, assign[:, 0], rows)
        empty = np.linalg.norm(sums, axis=1) == 0
        sums[empty] = km.centroids[empty]  # (k-means leaves no cluster empty; safety)
        return self.index.sa_encode(_unit(sums))


def maxsim_rows(q: np.ndarray, rows: np.ndarray, n_pages: int) -> np.ndarray:
    """MaxSim of q against n_pages consecutive pages of equally many rows each."""
    sim = rows @ q.T  # (n_pages * T, n_q)
    return sim.reshape(n_pages, len(rows) // n_pages, -1).max(axis=1).sum(axis=1)


def run(
    kind: str,
    n_pages: int,
    n_queries: int,
    nlist: int,
    nprobe: int,
    candidates: list[int],
    pq_sizes: list[int],
    only: list[str] = (),
) -> dict:
    t0 = time.perf_counter()
    x, queries = corpus(kind, n_pages, n_queries)
    gen_s = time.perf_counter() - t0
    t = time.perf_counter()
    exact = exact_scores(x, queries)  # (n_q, n_pages)
    exact_s = time.perf_counter() - t
    flat = x.reshape(-1, DIM)
    rng = np.random.default_rng(0)
    sample = np.ascontiguousarray(flat[np.sort(rng.choice(len(flat), size=min(len(flat), TRAIN_ROWS), replace=False))])
    t = time.perf_counter()
    quantizer = train_centroids(sample, nlist)
    kmeans_s = time.perf_counter() - t
    t = time.perf_counter()
    assign = np.empty(len(flat), dtype=np.int64)
    for s in range(0, len(flat), 1 << 18):
        _, a = quantizer.search(flat[s : s + (1 << 18)], 1)
        assign[s : s + (1 << 18)] = a[:, 0]
    assign_s = time.perf_counter() - t
    lists = PageLists(assign.reshape(n_pages, TOKENS), nlist)
    centroids = quantizer.reconstruct_n(0, nlist)
    list_bytes_per_page = len(lists.entries) * 8 / n_pages  # FAISS ids are 8 bytes
    # candidate stage, once per query (shared by every layout)
    max_c = max(candidates)
    cand, stage_ms = [], []
    for q in queries:
        t = time.perf_counter()
        s = candidate_scores(q, centroids, lists, nprobe)
        best = np.argpartition(-s, max_c - 1)[:max_c] if max_c < n_pages else np.arange(n_pages)
        best = best[np.argsort(-s[best], kind="stable")]
        stage_ms.append((time.perf_counter() - t) * 1000)
        cand.append(best)
    top5 = [np.argsort(-row, kind="stable")[:5] for row in exact]
    fifth = np.array([row[t5[-1]] for row, t5 in zip(exact, top5, strict=True)])
    every: list[Layout] = [
        Fp32(),
        Int8(),
        SQ(8),
        SQ8Fixed(),
        SQ(6),
        SQ(4),
        IvfSq(8),
        IvfSq(6),
        *(IvfPq(m) for m in pq_sizes),
        PooledSQ8(2),
        PooledSQ8(3),
    ]
    layouts = [lay for lay in every if not only or any(lay.name.startswith(o) for o in only)]
    results = []
    for lay in layouts:
        t = time.perf_counter()
        lay.train(sample, quantizer)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        if isinstance(lay, Fp32):
            codes = x  # no copy of the float32 corpus
        elif isinstance(lay, PooledSQ8):
            codes = np.stack([lay.encode_page(page) for page in x])
        else:
            codes = np.concatenate(
                [lay.encode(np.ascontiguousarray(flat[s : s + (1 << 17)])) for s in range(0, len(flat), 1 << 17)]
            )
            codes = codes.reshape(n_pages, TOKENS, -1)
        encode_s = time.perf_counter() - t
        row = {
            "layout": lay.name,
            "bytes_per_token": lay.code_bytes,
            "bytes_per_page": lay.code_bytes * lay.tokens + list_bytes_per_page + 60 + lay.codec_bytes / n_pages,
            "train_s": train_s,
            "encode_s_per_1000_pages": encode_s / n_pages * 1000,
            "by_candidates": {},
        }
        for c in candidates:
            tol, strict, drift, ms = [], [], [], []
            for qi, q in enumerate(queries):
                pages = np.sort(cand[qi][:c])
                t = time.perf_counter()
                pc = codes[pages].reshape(-1, codes.shape[-1])
                scores = maxsim_rows(q, lay.decode(pc), len(pages))
                ms.append((time.perf_counter() - t) * 1000)
                order = np.lexsort((pages, -scores))[:5]
                got = pages[order]
                ex = exact[qi][got]
                tol.append(np.mean(ex >= fifth[qi] * (1 - TIE)))
                strict.append(len(set(got.tolist()) & set(top5[qi].tolist())) / 5)
                drift.extend((np.abs(scores[order] - ex) / ex).tolist())
            row["by_candidates"][c] = {
                "recall_tie": float(np.mean(tol)),
                "recall_strict": float(np.mean(strict)),
                "drift_p99": float(np.percentile(drift, 99)),
                "drift_max": float(np.max(drift)),
                "rerank_p50_ms": float(np.median(ms)),
            }
        results.append(row)
        print(json.dumps({"corpus": kind, **row}), file=sys.stderr, flush=True)
    return {
        "corpus": kind,
        "pages": n_pages,
        "queries": n_queries,
        "nlist": nlist,
        "nprobe": nprobe,
        "generate_s": gen_s,
        "exact_s": exact_s,
        "kmeans_s": kmeans_s,
        "assign_s_per_1000_pages": assign_s / n_pages * 1000,
        "list_entries_per_page": len(lists.entries) / n_pages,
        "candidate_stage_p50_ms": float(np.median(stage_ms)),
        "layouts": results,
        "load": os.getloadavg(),
    }


def print_table(res: dict) -> None:
    cs = list(res["layouts"][0]["by_candidates"])
    print(
        f"\n### {res['corpus']}: {res['pages']:,} pages, {res['queries']} queries, {res['nlist']} centroids, "
        f"nprobe {res['nprobe']}"
    )
    print(
        f"k-means {res['kmeans_s']:.0f} s, assignment {res['assign_s_per_1000_pages']:.1f} s / 1000 pages, "
        f"{res['list_entries_per_page']:.0f} list entries / page, candidate stage "
        f"p50 {res['candidate_stage_p50_ms']:.1f} ms, "
        f"load after {', '.join(f'{v:.2f}' for v in res['load'])}\n"
    )
    head = " | ".join(f"{c} cand.: tie / strict recall@5, drift p99, rerank p50" for c in cs)
    print(f"| layout | B/token | B/page | train s | encode s/1000 p | {head} |")
    print("|---" * (5 + len(cs)) + "|")
    for r in res["layouts"]:
        cells = []
        for c in cs:
            b = r["by_candidates"][c]
            cells.append(
                f"{b['recall_tie']:.3f} / {b['recall_strict']:.3f}, {100 * b['drift_p99']:.2f} "
                f"%, {b['rerank_p50_ms']:.0f} ms"
            )
        print(
            f"| {r['layout']} | {r['bytes_per_token']} | {r['bytes_per_page']:,.0f} | {r['train_s']:.1f} | "
            f"{r['encode_s_per_1000_pages']:.2f} | " + " | ".join(cells) + " |"
        )
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, nargs="+", default=[2000])
    ap.add_argument("--corpus", nargs="+", default=["neartie", "clustered"], choices=["neartie", "clustered"])
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--candidates", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--pq", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--layouts", nargs="*", default=[], help="only the layouts whose names start with these")
    ap.add_argument("--json", type=Path, help="also append the raw results to this file")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    for n in args.pages:
        for kind in args.corpus:
            res = run(kind, n, args.queries, args.nlist, args.nprobe, args.candidates, args.pq, args.layouts)
            print_table(res)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
