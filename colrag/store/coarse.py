"""Coarse centroids for the candidate stage: FAISS k-means, FAISS assignment.

Trained once, when the stored rows (plus the batch being added) first reach MIN_ROWS
(~670 pages): spherical k-means through an IndexIVFFlat's `train` (faiss.Kmeans and
faiss.Clustering.train, FAISS's Python wrappers, fail once pymupdf is imported; the IVF
path does the same clustering in C++), on at most POINTS_PER_CENTROID rows per centroid.
Stored as the trained quantizer (an IndexFlatIP of the centroids) in
vectors/coarse-000001.faiss. Every page then records the ids of the centroids its tokens
are assigned to (`page_centroids`, FAISS's quantizer search), in the catalog row of the
page; the page lists (colrag.store.lists) are built from those.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import faiss_io

COARSE_FILE = "coarse-000001.faiss"
MIN_ROWS = 1 << 19  # ~670 pages of 783 tokens: below this an index is searched exhaustively
MAX_CENTROIDS = 1 << 12
POINTS_PER_CENTROID = 64
KMEANS_ITERS = 10
CENTROID_DTYPE = np.dtype("<u2")  # ids as stored in the catalog (MAX_CENTROIDS <= 65,536)
_CHUNK = 1 << 16
ASSIGN_ROWS = 1 << 16  # stored rows decoded and assigned per block when the centroids are first trained


def n_centroids(n_rows: int) -> int:
    """A power of two, ~n_rows / POINTS_PER_CENTROID, in [16, MAX_CENTROIDS]."""
    return int(min(MAX_CENTROIDS, max(16, 2 ** math.floor(math.log2(max(n_rows // POINTS_PER_CENTROID, 1))))))


def train(sample: np.ndarray, seed: int = 0) -> Any:
    """Spherical k-means of (n, dim) unit rows; returns the quantizer (IndexFlatIP of the centroids)."""
    faiss = faiss_io.faiss_module()
    x = np.ascontiguousarray(sample, dtype=np.float32)
    dim = x.shape[1]
    k = n_centroids(len(x))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, k, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.spherical = True
    ivf.cp.niter = KMEANS_ITERS
    ivf.cp.seed = seed
    ivf.cp.max_points_per_centroid = POINTS_PER_CENTROID
    ivf.cp.min_points_per_centroid = 1
    ivf.train(x)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(ivf.quantizer.reconstruct_n(0, k))
    return quantizer


def assign(quantizer: Any, x: np.ndarray) -> np.ndarray:
    """(n, dim) rows -> (n,) int64 id of each row's best centroid (FAISS's search)."""
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), _CHUNK):
        _, ids = quantizer.search(np.ascontiguousarray(x[s : s + _CHUNK], dtype=np.float32), 1)
        out[s : s + _CHUNK] = ids[:, 0]
    return out


def page_centroids(quantizer: Any, pages: list[np.ndarray]) -> list[bytes]:
    """For each page's (n_tokens, dim) rows: the sorted distinct ids of its tokens' centroids, as stored."""
    if not pages:
        return []
    ids = assign(quantizer, np.concatenate(pages))
    out, start = [], 0
    for p in pages:
        out.append(np.unique(ids[start : start + len(p)]).astype(CENTROID_DTYPE).tobytes())
        start += len(p)
    return out


def unpack(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=CENTROID_DTYPE)


def centroids(quantizer: Any) -> np.ndarray:
    """(k, dim) float32 centroid rows."""
    return quantizer.reconstruct_n(0, int(quantizer.ntotal))
