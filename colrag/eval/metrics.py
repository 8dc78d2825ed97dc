"""Retrieval metrics of `colrag eval`, with ties counted fairly.

Metrics per query (then the mean over queries), from the ranked pages of the search:
  nDCG@k  = DCG@k / IDCG@k, DCG@k = sum over ranks p <= k of gain_p / log2(p + 1)
            (linear gain, the qrels score), IDCG@k the DCG@k of the ideal ordering
  recall@k = relevant pages in the top k / all relevant pages of the query
  MRR@10  = 1 / rank of the first relevant page in the top 10 (0 when none)
Ties: pages with exactly the same score have no order of their own, so every metric is
its expected value over all orderings of each group of tied pages (each tied position
gets the group's mean gain; recall counts a tied group's relevant pages in proportion
to the part of the group above the cut-off). Without ties this is the usual value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRICS = ("ndcg@5", "ndcg@10", "recall@1", "recall@5", "recall@10", "mrr@10")


def _discount(rank0: int) -> float:
    return 1.0 / math.log2(rank0 + 2)


def tie_groups(ranked: Sequence[tuple[str, float]]) -> list[list[str]]:
    """Consecutive runs of equal score in a best-first ranking: [[corpus id, ...], ...]."""
    groups: list[list[str]] = []
    last: float | None = None
    for cid, score in ranked:
        if groups and score == last:
            groups[-1].append(cid)
        else:
            groups.append([cid])
        last = score
    return groups


def query_metrics(ranked: Sequence[tuple[str, float]], qrels: dict[str, float]) -> dict[str, float]:
    """METRICS for one query: `ranked` is [(corpus id, score)] best first, `qrels` {corpus id: score}.

    Expected values over the orderings of tied pages (see the module doc)."""
    gains = {cid: s for cid, s in qrels.items() if s > 0}
    n_rel = len(gains)
    if not n_rel:
        raise ValueError("a query without a relevant page has no metrics")
    ideal = sorted(gains.values(), reverse=True)
    dcg = {5: 0.0, 10: 0.0}
    found = {1: 0.0, 5: 0.0, 10: 0.0}
    mrr = 0.0
    first_seen = False
    start = 0
    for group in tie_groups(ranked):
        n = len(group)
        rel = [gains[c] for c in group if c in gains]
        r = len(rel)
        mean_gain = sum(rel) / n
        for k in dcg:
            dcg[k] += mean_gain * sum(_discount(p) for p in range(start, min(start + n, k)))
        for k in found:
            found[k] += r * max(0, min(start + n, k) - start) / n
        if r and not first_seen:
            first_seen = True
            # P(the group's first relevant page sits at offset j) = C(n-1-j, r-1) / C(n, r)
            total = math.comb(n, r)
            mrr = sum(math.comb(n - 1 - j, r - 1) / total / (start + j + 1) for j in range(n - r + 1) if start + j < 10)
        start += n
    out = {}
    for k in (5, 10):
        idcg = sum(g * _discount(p) for p, g in enumerate(ideal[:k]))
        out[f"ndcg@{k}"] = dcg[k] / idcg
    for k in (1, 5, 10):
        out[f"recall@{k}"] = found[k] / n_rel
    out["mrr@10"] = mrr
    return {m: out[m] for m in METRICS}


def first_relevant_rank(ranked: Sequence[tuple[str, float]], qrels: dict[str, float]) -> int | None:
    """1 + the number of pages scored strictly above the best-ranked relevant page; None if none was ranked."""
    above = 0
    for group in tie_groups(ranked):
        if any(qrels.get(c, 0) > 0 for c in group):
            return above + 1
        above += len(group)
    return None


def mean_metrics(per_query: Sequence[dict[str, float]]) -> dict[str, float]:
    return {m: float(np.mean([q[m] for q in per_query])) if per_query else 0.0 for m in METRICS}


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds, dtype=np.float64) * 1000.0, q)) if seconds else 0.0
