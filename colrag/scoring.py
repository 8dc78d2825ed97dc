"""Late-interaction (MaxSim) scoring, as in ColBERT / ColPali."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def maxsim(queries: Sequence[np.ndarray], pages: Sequence[np.ndarray], *, chunk: int = 256) -> np.ndarray:
    """Scores of every query against every page, shape (n_queries, n_pages).

    score(q, p) = sum over query tokens of the max over page tokens of <q_i, p_j>.
    `queries` and `pages` are lists of (n_tokens, dim) arrays (any float dtype);
    pages are scored in chunks of `chunk` so memory stays bounded for large lists.
    """
    n_q, n_p = len(queries), len(pages)
    scores = np.zeros((n_q, n_p), dtype=np.float32)
    if n_q == 0 or n_p == 0:
        return scores
    q_all = np.concatenate([np.asarray(q, dtype=np.float32) for q in queries])  # (sum_q, dim)
    q_bounds = np.cumsum([0] + [len(q) for q in queries])
    for start in range(0, n_p, chunk):
        block = [np.asarray(p, dtype=np.float32) for p in pages[start : start + chunk]]
        p_all = np.concatenate(block)  # (sum_p, dim)
        p_bounds = np.cumsum([0] + [len(p) for p in block])
        sim = q_all @ p_all.T  # (sum_q, sum_p)
        # max over each page's tokens, then sum over each query's tokens
        per_page_max = np.maximum.reduceat(sim, p_bounds[:-1], axis=1)  # (sum_q, n_block)
        empty = p_bounds[1:] == p_bounds[:-1]
        per_page_max[:, empty] = 0.0
        scores[:, start : start + len(block)] = np.add.reduceat(per_page_max, q_bounds[:-1], axis=0)
    return scores
