"""Qdrant index names, ids and on-disk facts shared by the Edge and server engines.

What is here: the `--index` spec syntax (`qdrant+edge:PATH`, `qdrant:http://HOST:6333/COLLECTION`),
the collection's vector names and tuning constants, a page's point id (uuid5 of file and page,
so writing a page again replaces it), the pooled candidate vectors (`pool_tokens`), the
manifest check, the Edge folder's marker and writer lock, and `Engine`: what QdrantIndex
needs from either engine (colrag.store.qdrant.edge, colrag.store.qdrant.server).
Nothing here imports a Qdrant package; `import_package` does, with one clear error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...errors import IndexStoreError, InputError
from ...fsutil import atomic_write_json
from ...search import Hit
from ..lock import LOCK_FILE, WriterLock

EDGE_PREFIX = "qdrant+edge:"
SERVER_PREFIX = "qdrant:"
FORMAT = "colrag-qdrant"
# 2: document points (DOC) and the pages' "state" (written by `colrag index`); an index of schema 1
# (pages only, made by export-index or the Python API) is read and written as it is
SCHEMA_VERSION = 2
EDGE_MARKER = "colrag-qdrant.json"  # in an Edge index folder: says colrag made it
EDGE_SHARD_DIR = "shard"
TOKENS = "tokens"
POOLED = "pooled"
MANIFEST_ID = "00000000-0000-4000-8000-00000000c01a"
_ID_NAMESPACE = uuid.UUID("6f0c5a9e-3d1b-4f5e-9a57-2f4b8c1d7e01")
EXACT_ALL_PAGES = 500  # up to this many pages every page is scored exactly (brute force)
POOLED_VECTORS = 32  # k-means centroids of a page's tokens: the candidate stage's small multivector
POOLED_ITERATIONS = 4
CANDIDATES = 256  # pages prefetched by the pooled multivector in a larger index
HNSW_M = 16  # the pooled multivectors' HNSW graph (Qdrant's defaults)
HNSW_EF_CONSTRUCT = 100
HNSW_EF = 128  # search-time ef (at least the number of candidates)
HNSW_FULL_SCAN_KB = 1000  # below this much pooled data in a segment Qdrant scans instead
COMMIT_BATCH = 64  # pages per upsert request
FLOAT16_MAX = 65504.0
DOC = "doc"  # payload key of a document point (vector-less, one per file: the catalog facts of `colrag index`)
STATE = "state"  # payload key of a page: INDEXING while its document is being indexed (hidden from search)
INDEXING = "indexing"
READY = "ready"
# payload key of a page written by `colrag index`: its document's generation. A changed file's new
# version is written beside the old one (new point ids) and replaces it when complete (catalog.py).
GEN = "gen"
GENERATION = "generation"  # payload key of a document point: the generation its pages are written with
SERVING = "serving"  # payload key of a document being re-indexed: the facts of the version search still sees


class PageIndex(Protocol):
    """The page-index API of issue 12 (`colrag.open_index`), which this backend implements."""

    dim: int | None

    def add_page(self, file: str, page: int, vectors: np.ndarray) -> None: ...
    def commit(self) -> None: ...
    def search(self, query_vectors: np.ndarray, k: int = 5) -> list[Hit]: ...
    def remove_file(self, file: str) -> None: ...
    def close(self) -> None: ...


def is_qdrant_spec(spec: str | os.PathLike | None) -> bool:
    return isinstance(spec, str) and (spec.startswith(EDGE_PREFIX) or spec.startswith(SERVER_PREFIX))


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'qdrant+edge:PATH' -> ('edge', PATH, None);
    'qdrant:http(s)://HOST:PORT/COLLECTION' -> ('server', URL, COLLECTION)."""
    if spec.startswith(EDGE_PREFIX):
        path = spec[len(EDGE_PREFIX) :]
        if not path:
            raise InputError("--index qdrant+edge:PATH needs a folder path")
        return "edge", path, None
    if spec.startswith(SERVER_PREFIX):
        rest = spec[len(SERVER_PREFIX) :]
        if not (rest.startswith("http://") or rest.startswith("https://")):
            raise InputError(f"--index {spec!r}: expected qdrant:http://HOST:6333/COLLECTION")
        scheme, _, tail = rest.partition("://")
        host, _, collection = tail.partition("/")
        collection = collection.strip("/")
        if not host or not collection or "/" in collection:
            raise InputError(f"--index {spec!r}: expected qdrant:http://HOST:6333/COLLECTION (one collection name)")
        if not collection.replace("-", "").replace("_", "").isalnum():
            raise InputError(f"invalid Qdrant collection name {collection!r}: use letters, digits, '-' and '_'")
        return "server", f"{scheme}://{host}", collection
    raise InputError(f"{spec!r} is not a Qdrant index (qdrant+edge:PATH or qdrant:http://HOST:6333/COLLECTION)")


def pool_tokens(vectors: np.ndarray, n: int = POOLED_VECTORS, iterations: int = POOLED_ITERATIONS) -> np.ndarray:
    """A page's tokens summarised by n centroids (k-means by dot product, deterministic: seeded
    with evenly spaced tokens); a page of at most n tokens is its own summary."""
    if len(vectors) <= n:
        return vectors
    centres = vectors[np.linspace(0, len(vectors) - 1, n).astype(int)].copy()  # (n, dim)
    for _ in range(iterations):
        assign = np.argmax(vectors @ centres.T, axis=1)  # (n_tokens,)
        onehot = np.zeros((len(vectors), n), dtype=np.float32)
        onehot[np.arange(len(vectors)), assign] = 1.0
        sums = onehot.T @ vectors  # (n, dim)
        counts = np.bincount(assign, minlength=n)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return np.ascontiguousarray(centres, dtype=np.float32)


def point_id(file: str, page: int, generation: int = 0) -> str:
    """The page's point id: deterministic, so writing a page again replaces it; a later generation of
    the file (a changed version being indexed) gets other ids, so the old pages stay until it is done."""
    name = f"{file}\0{int(page)}" + (f"\0{int(generation)}" if generation else "")
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def serving_generation(doc: dict[str, Any] | None) -> int:
    """The generation whose pages search sees, from a document point's payload (0: none recorded).
    While a changed file is re-indexed (status "indexing") that is the previous version's."""
    if not doc:
        return 0
    if doc.get("status") == INDEXING:
        doc = doc.get(SERVING) if isinstance(doc.get(SERVING), dict) else None
    value = (doc or {}).get(GENERATION, 0)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def doc_point_id(file: str) -> str:
    """The point id of a file's document point (its catalog facts)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{DOC}\0{file}"))


def _import(module: str) -> Any:
    try:
        return __import__(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise IndexStoreError(
            f"a Qdrant index needs the {module.replace('_', '-')} package: pip install 'colrag[qdrant]'"
        ) from None


@dataclass
class _Page:
    id: str
    file: str
    page: int
    vectors: np.ndarray  # (n_tokens, dim) float32
    pooled: np.ndarray  # (<= POOLED_VECTORS, dim) float32
    extra: dict[str, Any] = field(default_factory=dict)  # more payload: width, height, state


@dataclass
class _Scored:
    file: str
    page: int
    score: float


class Engine(Protocol):
    """What QdrantIndex needs from a Qdrant: the embedded engine or a server collection."""

    def exists(self) -> bool: ...
    def is_empty(self) -> bool: ...
    def create(self, dim: int) -> None: ...
    def get_manifest(self) -> dict[str, Any] | None: ...
    def put_manifest(self, manifest: dict[str, Any]) -> None: ...
    def get_meta(self, point: str) -> dict[str, Any] | None: ...
    def put_meta(self, point: str, payload: dict[str, Any]) -> None: ...
    def delete_ids(self, points: list[str]) -> None: ...
    def set_file_state(self, file: str, state: str, generation: int | None = None) -> None: ...
    def scroll_docs(self) -> Iterator[dict[str, Any]]: ...
    def upsert(self, pages: list[_Page]) -> None: ...
    def delete_file(self, file: str, only_gen: int | None = None, except_gen: int | None = None) -> None: ...
    def flush(self) -> None: ...
    def count_pages(self) -> int: ...
    def scroll_pages(self, file: str | None, generation: int | None = None) -> Iterator[tuple[str, int, int]]: ...
    def vectors_of(self, point: str) -> np.ndarray | None: ...
    def query(self, q: np.ndarray, k: int, exact: bool, candidates: int) -> list[_Scored]: ...
    def optimize(self) -> None: ...
    def disk_bytes(self) -> int | None: ...
    def close(self) -> None: ...


def check_manifest(manifest: dict[str, Any], where: str, dim: int | None) -> int:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexStoreError(f"{where} is not a colrag index (no colrag manifest in it)")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise IndexStoreError(
            f"index {where} has schema version {version!r}, newer than this colrag reads ({SCHEMA_VERSION}): "
            "upgrade colrag"
        )
    stored = manifest.get("dim")
    if not isinstance(stored, int) or stored < 1:
        raise IndexStoreError(f"index {where}: its manifest has no valid dim ({stored!r})")
    if dim is not None and dim != stored:
        raise IndexStoreError(f"index {where} holds {stored}-d vectors, not {dim}-d")
    return stored


def _edge_folder(folder: Path, create: bool) -> WriterLock:
    """Check the folder is an Edge index colrag made (or a new/empty one), and lock it."""
    if folder.exists() and not folder.is_dir():
        raise IndexStoreError(f"{folder} is a file, not an index folder")
    marker = folder / EDGE_MARKER
    if not marker.is_file():
        if not create:
            raise IndexStoreError(
                f"no index at {folder}: run `colrag index DIR --index {EDGE_PREFIX}{folder}` to create it"
            )
        if folder.is_dir():
            strangers = sorted(p.name for p in folder.iterdir() if p.name not in (LOCK_FILE,))
            if strangers:
                raise IndexStoreError(
                    f"{folder} exists and is not a colrag index (it holds {', '.join(strangers[:3])}); "
                    "choose another --index"
                )
        folder.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(folder)
    try:
        lock.acquire()
    except IndexStoreError:
        raise IndexStoreError(
            f"index {folder} is open in another colrag process; a Qdrant Edge index is opened by one process at a time "
            "(use a Qdrant server to share one)"
        ) from None
    if not marker.is_file():
        atomic_write_json(
            marker, {"format": FORMAT + "-edge", "schema_version": SCHEMA_VERSION, "shard": EDGE_SHARD_DIR}
        )
    return lock


def _folder_bytes(folder: Path) -> int:
    """Bytes the folder's files occupy on disk (allocated blocks: Qdrant's files are sparse)."""
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def _payload_page(payload: dict[str, Any] | None) -> tuple[str, int, int]:
    if not payload or not isinstance(payload.get("file"), str) or not isinstance(payload.get("page"), int):
        raise IndexStoreError(f"a page point has an invalid payload {payload!r}: the index is damaged")
    return payload["file"], payload["page"], int(payload.get("n_tokens", 0))
