"""Centroids for the candidate stage: a two-level k-means codebook over token vectors.

Every stored token gets the id of its centroid (a uint16 code, written with its row).
The centroids form a tree: `coarse` (K1, dim) k-means centroids, and under each coarse
centroid K2 `fine` centroids from k-means on the tokens of that coarse cell; a token's
code is coarse_id * K2 + fine_id. Assigning a token costs K1 + K2 dot products instead
of K1 * K2 (a flat 32,768-centroid assignment of 77 M tokens would take hours on two
cores; this takes about a minute). Search scores query tokens against all K1 * K2 fine
centroids (colrag.search).

The codebook is trained once, from the first CODEBOOK_MIN_ROWS stored tokens (plus the
batch being added), when an index first reaches that size; it is never retrained
(PLAID does the same: a sample of a collection is enough to place its centroids).
File: vectors/codebook.npy, float16 (K1 + K1 * K2, dim) (the centroids are rounded to float16
when trained, so the codes a writer assigns equal those the stored file gives): the coarse rows then the fine
rows; K1 and K2 are recorded in the catalog (meta 'codebook') in the transaction that
commits the first codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CODEBOOK_FILE = "codebook.npy"
CODEBOOK_MIN_ROWS = 1 << 19  # ~670 pages of 783 tokens: train once the index holds this many tokens
TRAIN_ROWS = 1 << 19  # at most this many sampled tokens for k-means
MAX_CENTROIDS = 1 << 15  # uint16 codes allow 65,536
POINTS_PER_CENTROID = 16  # sample size / centroids, for the total count
MAX_FINE = 64
KMEANS_ITERS = 12
_ASSIGN_CHUNK = 1 << 14


@dataclass
class Codebook:
    coarse: np.ndarray  # (K1, dim) float32
    fine: np.ndarray  # (K1 * K2, dim) float32; rows [g * K2, (g + 1) * K2) lie under coarse centroid g

    @property
    def n_coarse(self) -> int:
        return len(self.coarse)

    @property
    def n_fine(self) -> int:
        return len(self.fine) // len(self.coarse)

    @property
    def n_centroids(self) -> int:
        return len(self.fine)

    def assign(self, x: np.ndarray) -> np.ndarray:
        """(n, dim) float rows -> (n,) uint16 codes: best coarse centroid, then its best fine one."""
        x = np.asarray(x, dtype=np.float32)  # (n, dim)
        k2 = self.n_fine
        coarse = np.concatenate(
            [np.argmax(x[s : s + _ASSIGN_CHUNK] @ self.coarse.T, axis=1) for s in range(0, len(x), _ASSIGN_CHUNK)]
            or [np.zeros(0, dtype=np.int64)]
        )  # (n,)
        order = np.argsort(coarse, kind="stable")
        bounds = np.searchsorted(coarse[order], np.arange(self.n_coarse + 1))
        codes = np.empty(len(x), dtype=np.uint16)
        for g in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[g] : bounds[g + 1]]
            fine = self.fine[g * k2 : (g + 1) * k2]  # (K2, dim)
            codes[rows] = g * k2 + np.argmax(x[rows] @ fine.T, axis=1)
        return codes

    def to_array(self) -> np.ndarray:
        return np.concatenate([self.coarse, self.fine]).astype(np.float16)  # (K1 + K1*K2, dim)

    @classmethod
    def from_array(cls, arr: np.ndarray, n_coarse: int) -> "Codebook":
        arr = np.asarray(arr, dtype=np.float32)
        return cls(np.ascontiguousarray(arr[:n_coarse]), np.ascontiguousarray(arr[n_coarse:]))


def sizes(n_sample: int) -> tuple[int, int]:
    """(K1, K2) for a training sample: ~n/16 centroids, a power of two in [16, MAX_CENTROIDS]."""
    total = int(min(MAX_CENTROIDS, max(16, 2 ** math.floor(math.log2(max(n_sample // POINTS_PER_CENTROID, 1))))))
    k2 = min(MAX_FINE, 2 ** (int(math.log2(total)) // 2))
    return total // k2, k2


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k spherical k-means centroids of x (n >= k unit rows), in numpy.

    (faiss.Kmeans is not used: once pymupdf is imported, its SWIG std::vector proxies
    shadow faiss's and faiss.Kmeans.train fails.)
    """
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), size=k, replace=False)].copy()  # (k, dim)
    for _ in range(KMEANS_ITERS):
        owner = np.argmax(x @ c.T, axis=1)  # (n,)
        sums = np.zeros_like(c)
        _segment_sums(x, owner, sums)
        counts = np.bincount(owner, minlength=k)
        empty = counts == 0
        if empty.any():  # reseed empty clusters with random points
            sums[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        c = sums / np.maximum(norms, 1e-12)
    return c.astype(np.float32)


def _segment_sums(x: np.ndarray, owner: np.ndarray, out: np.ndarray) -> None:
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(len(out) + 1))
    nonempty = np.flatnonzero(np.diff(bounds))
    out[nonempty] = np.add.reduceat(x[order], bounds[nonempty], axis=0)


def train(sample: np.ndarray, seed: int = 0) -> Codebook:
    """Two-level k-means on (n, dim) unit rows."""
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(np.asarray(sample, dtype=np.float32)[rng.permutation(len(sample))])  # (n, dim), shuffled
    k1, k2 = sizes(len(x))
    sub = x[: 64 * k1]
    coarse = _kmeans(sub, k1, seed) if len(sub) > k1 else _pad(sub, k1)  # (K1, dim)
    owner = np.argmax(x @ coarse.T, axis=1) if len(x) <= (1 << 16) else np.concatenate(
        [np.argmax(x[s : s + (1 << 16)] @ coarse.T, axis=1) for s in range(0, len(x), 1 << 16)]
    )  # (n,)
    fine = np.empty((k1 * k2, x.shape[1]), dtype=np.float32)
    for g in range(k1):
        members = x[owner == g]
        if len(members) > 4 * k2:
            fine[g * k2 : (g + 1) * k2] = _kmeans(members[: 32 * k2], k2, seed + g)
        else:  # few tokens in this cell: they are their own centroids, the rest repeat the coarse one
            block = np.concatenate([members[:k2], np.repeat(coarse[g : g + 1], k2, axis=0)])[:k2]
            fine[g * k2 : (g + 1) * k2] = block
    # rounded to float16 (the stored precision) before any code is assigned with them
    return Codebook(coarse.astype(np.float16).astype(np.float32), fine.astype(np.float16).astype(np.float32))


def _pad(x: np.ndarray, k: int) -> np.ndarray:
    reps = -(-k // max(len(x), 1))
    return np.tile(x, (reps, 1))[:k] if len(x) else np.eye(k, x.shape[1], dtype=np.float32)
