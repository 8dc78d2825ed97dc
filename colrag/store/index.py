"""An index folder: manifest + SQLite catalog + FAISS vector files.

    indexes/<name>/
        manifest.json                  format, schema version, retriever identity (or none), dims, codec, render budget
        catalog.sqlite                 documents, pages (+ each page's centroid ids), segments, meta (WAL mode)
        vectors/seg-NNNNNN-vVVVVVV.faiss   page token vectors, FAISS SQ8, page-major (colrag.store.segments)
        vectors/coarse-000001.faiss    coarse centroids (FAISS k-means), once the index reaches ~670 pages
        vectors/lists-gNNNNNNNNN.faiss page lists: centroid -> pages (a FAISS inverted file; a cache)
        features/doc-*.feat            each page's vision-tower output, one file per document (features.py)
        write.lock                     held (fcntl) by the one process writing

Readers (`Index.open`) never lock; a writer (`Index.open_writer`, colrag.store.opening) holds write.lock, repairs
what a crash left (colrag.store.writer) and upgrades a schema-2 index in place
(colrag.store.migrate). A page becomes visible to search when its document's status turns
'done', in the same transaction that drops the document's previous version.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexStoreError
from ..render import RenderOptions
from ..utf8 import text
from . import catalog as cat
from . import coarse, faiss_io, lists
from . import features as pf
from .catalog import Document, PageRecord
from .check import CheckReport, check_index, index_stats
from .folder import OWN_ENTRIES
from .lock import WriterLock
from .manifest import MANIFEST_FILE, SCHEMA_VERSION, RetrieverInfo, check_retriever
from .segments import SEGMENTS_DIR, SegmentReader, decode

__all__ = [
    "MANIFEST_FILE",
    "OWN_ENTRIES",
    "SCHEMA_VERSION",
    "CheckReport",
    "Index",
    "RetrieverInfo",
    "Snapshot",
    "check_retriever",
]


@dataclass
class Snapshot:
    """A consistent view of the visible pages, read in one SQLite transaction."""

    generation: int
    pages: list[PageRecord]  # ordered by (segment, row offset)
    segments: dict[int, tuple[str, int]]  # id -> (FAISS file version, committed rows)
    coarse: dict | None = None  # meta 'coarse': every page has its centroid ids
    lists: dict | None = None  # meta 'lists': the saved page lists ({"file", "generation"})


class Index:
    def __init__(self, path: Path, manifest: dict[str, Any], conn: sqlite3.Connection | None, lock: WriterLock | None):
        self.path = path
        self.manifest = manifest
        self.conn: Any = conn
        self.lock = lock
        self.dim = int(manifest["dim"])
        self.render = RenderOptions(**manifest.get("render", {}))
        self.vectors_dir = path / SEGMENTS_DIR
        self.reader = SegmentReader(self.vectors_dir, self.dim)
        self._coarse: Any = None  # the coarse quantizer, loaded once (it never changes once trained)
        self._lists: lists.PageLists | None = None
        self._snapshot: Snapshot | None = None  # a reader's last snapshot, reused while the generation holds
        self.writer: Any = None  # colrag.store.writer.Writer of a writable index
        self._features: pf.FeatureWriter | None = None  # set by open_writer when this index keeps page features
        self.repair_notes: list[str] = []  # what the writer's repair at open found (damaged page features)

    @property
    def has_retriever(self) -> bool:
        return self.manifest.get("retriever") is not None

    # -- opening (colrag.store.opening) ----------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, retriever: RetrieverInfo | None = None) -> Index:
        """Open for reading (no lock; works while a writer runs). A schema-2 index is upgraded first
        when no writer holds it."""
        from .opening import open_reader

        return open_reader(cls, Path(path), retriever)

    @classmethod
    def open_writer(
        cls,
        path: str | os.PathLike,
        retriever: RetrieverInfo | None,
        render: RenderOptions | None = None,
        *,
        dim: int | None = None,
        page_features: bool = True,
    ) -> Index:
        """Open (or create) for writing: takes write.lock, upgrades a schema-2 index, repairs what a crash left.

        `retriever` is checked against an existing index; None opens an existing index for
        maintenance (remove, compact), or creates one for precomputed vectors of `dim` dimensions.
        page_features: keep the pages' vision-tower output (add_pages' `features`) when the
        retriever names its vision tower (vision_hash); False stores none from this run."""
        from .opening import open_writer

        return open_writer(cls, Path(path), retriever, render, dim=dim, page_features=page_features)

    def close(self) -> None:
        if self._features is not None:
            self._features.close()
            self._features = None
        self.reader.close()
        self._lists = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        return self.lock is not None and self.lock.held

    def _need_writer(self) -> Any:
        if not self.writable or self.writer is None:
            raise RuntimeError("this Index was opened read-only")
        return self.writer

    # -- reading -------------------------------------------------------------------
    def generation(self) -> int:
        return cat.generation(self.conn)

    def snapshot(self) -> Snapshot:
        """The visible pages. A read-only Index reuses its last snapshot while the catalog
        generation is unchanged (at 100,000 pages a snapshot takes ~0.25 s to read). Every
        segment version it names is mapped at once: the writer deletes a version it replaced,
        and a mapping outlives the file's name."""
        if self.lock is None and self._snapshot is not None and self._snapshot.generation == self.generation():
            return self._snapshot
        for attempt in range(3):
            with cat.snapshot(self.conn):
                snap = Snapshot(
                    cat.generation(self.conn),
                    cat.visible_pages(self.conn),
                    cat.segments(self.conn),
                    cat.get_meta(self.conn, "coarse"),
                    cat.get_meta(self.conn, "lists"),
                )
            try:
                for name, rows in snap.segments.values():
                    self.reader.rows(name, rows)
                break
            except IndexStoreError:
                if attempt == 2:
                    raise
        self.reader.forget({name for name, _ in snap.segments.values()})
        if self.lock is None:
            self._snapshot = snap
        return snap

    def page_codes(self, snap: Snapshot, page: PageRecord) -> np.ndarray:
        """The page's stored (n_tokens, dim) SQ8 codes (a read-only view of the mapping)."""
        name, rows = snap.segments[page.segment_id]
        return self.reader.rows(name, rows)[page.row_offset : page.row_offset + page.n_tokens]

    def page_vectors(self, snap: Snapshot, page: PageRecord) -> np.ndarray:
        """The page's (n_tokens, dim) float32 rows, decoded from the stored codes as FAISS decodes them."""
        return decode(self.page_codes(snap, page))

    def prefetch(self, snap: Snapshot, pages: list[PageRecord]) -> None:
        """Hint that these pages' codes are about to be read (SegmentReader.willneed)."""
        spans: dict[int, list[tuple[int, int]]] = {}
        for page in pages:
            spans.setdefault(page.segment_id, []).append((page.row_offset, page.n_tokens))
        for segment_id, wanted in spans.items():
            name, rows = snap.segments[segment_id]
            self.reader.willneed(name, rows, wanted)

    def coarse_quantizer(self, snap: Snapshot) -> Any:
        """The coarse centroids' FAISS quantizer (the snapshot must have them)."""
        if snap.coarse is None:
            raise IndexStoreError(f"index {self.path} has no coarse centroids yet")
        if self._coarse is None:
            self._coarse = faiss_io.read_index(self.vectors_dir, snap.coarse["file"], mmap=None)
        return self._coarse

    def page_lists(self, snap: Snapshot) -> lists.PageLists | None:
        """The saved page lists (memory-mapped; possibly stale), or None."""
        if snap.lists is None or snap.coarse is None:
            return None
        if self._lists is None or self._lists.generation != int(snap.lists["generation"]):
            try:
                ivf = faiss_io.read_index(self.vectors_dir, snap.lists["file"], mmap="lists")
            except IndexStoreError:
                return None  # replaced by a newer version meanwhile; a cache, rebuilt in memory
            self._lists = lists.PageLists(ivf, int(snap.lists["generation"]), int(snap.lists["max_page_id"]))
        return self._lists

    def build_page_lists(self, snap: Snapshot) -> lists.PageLists:
        """Page lists of exactly the snapshot's pages (a writer saves them; a reader keeps them in memory)."""
        if self.writable:
            return self._need_writer().refresh_lists(force=True)
        sets = dict(cat.all_page_centroids(self.conn))
        ids = np.fromiter(sets, dtype=np.int64, count=len(sets))
        ivf = lists.build(int(snap.coarse["n_centroids"]), ids, [coarse.unpack(sets[int(i)]) for i in ids])  # type: ignore[index]
        return lists.PageLists(ivf, snap.generation, int(ids.max()) if len(ids) else 0)

    def documents(self, status: str | None = None) -> list[Document]:
        return cat.documents(self.conn, status)

    def page_errors(self, doc_id: int | None = None) -> list[tuple[str, int, str, str]]:
        """(path, page_no, kind, message) for visible (done) documents, or one document."""
        return cat.page_errors(self.conn, doc_id)

    def lookup(self, path: str) -> tuple[Document | None, Document | None]:
        """(the document's current 'done'/'failed' row, its 'indexing' row) for a path."""
        current = indexing = None
        for doc in cat.documents_of(self.conn, path):
            if doc.status == "indexing":
                indexing = doc
            else:
                current = doc
        return current, indexing

    def stored_page_numbers(self, doc_id: int) -> set[int]:
        """Pages of a document already committed (stored or recorded as failed)."""
        return cat.stored_page_numbers(self.conn, doc_id)

    def paths_under(self, folder: str) -> list[str]:
        """Catalogued paths inside a folder (recursively)."""
        prefix = text(folder).rstrip(os.sep) + os.sep  # as the catalog stores it
        return [p for p in cat.all_paths(self.conn) if p.startswith(prefix)]

    def stats(self) -> dict[str, Any]:
        return index_stats(self)

    def check(self, *, vectors: bool = True) -> CheckReport:
        """Verify catalog <-> vector files consistency. Returns problems (damage) and notes (harmless)."""
        return check_index(self, vectors=vectors)

    # -- writing (colrag.store.writer) -----------------------------------------------
    def begin_document(self, path: str, size: int, mtime_ns: int, sha256: str, n_pages: int) -> int:
        """Start (or restart) indexing a document version; its pages stay invisible until finish_document."""
        return int(self._need_writer().begin_document(path, size, mtime_ns, sha256, n_pages))

    def add_pages(
        self,
        doc_id: int,
        pages: list[tuple[int, int, int, np.ndarray]],
        errors: list[tuple[int, str, str]] = (),  # type: ignore[assignment]
        features: list[pf.ImageFeatures | None] | None = None,
    ) -> None:
        """Store pages (page_no, width, height, (n_tokens, dim) vectors) and page errors/warnings
        (page_no, kind, message) of an 'indexing' document, in one commit. `features`: one
        ImageFeatures (or None) per page, kept when this index keeps page features."""
        self._need_writer().add_pages(doc_id, pages, list(errors), features)

    @property
    def keeps_features(self) -> bool:
        """This writer stores page features (add_pages' `features`)."""
        return self._features is not None

    def features_to_repair(self) -> dict[int, list[tuple[int, int]]]:
        """{doc_id: [(page_id, page_no)]}: pages whose stored features were found damaged and dropped."""
        if self._features is None:
            return {}
        return {d: pf.pages_without_features(self.conn, d) for d in pf.docs_to_repair(self.conn)}

    def add_features(self, doc_id: int, features: list[tuple[int, pf.ImageFeatures]]) -> None:
        """Store (page_no, ImageFeatures) for pages already committed (a repair), in one commit;
        the document's repair mark goes when none of its pages lacks features any more."""
        self._need_writer()
        if self._features is None:
            return
        try:
            for page_no, f in features:
                self._features.append(self.conn, doc_id, page_no, f)
            self._features.sync()
            with cat.transaction(self.conn) as c:
                self._features.record(c, doc_id)
                if not pf.pages_without_features(c, doc_id) or not features:
                    pf.clear_repair(c, doc_id)
        except BaseException:
            self._features.rollback()
            raise
        self._features.committed()

    def _sweep_features(self) -> None:
        """After a commit that may have deleted documents: delete their feature files (space back at once)."""
        if self._features is not None:
            self._features.close()  # its document may be the one gone
        pf.sweep(self.conn, self.path / pf.FEATURES_DIR)

    def finish_document(self, doc_id: int) -> None:
        """Make a document's pages visible, replacing the previous version of its path."""
        self._need_writer().finish_document(doc_id)
        self._sweep_features()

    def record_failure(self, path: str, size: int | None, mtime_ns: int | None, sha256: str | None, error: str) -> None:
        """The whole file could not be indexed: replace whatever the path had with a 'failed' row."""
        self._need_writer().record_failure(path, size, mtime_ns, sha256, error)
        self._sweep_features()

    def discard_in_progress(self, doc_id: int) -> None:
        """Drop an interrupted 'indexing' version that is no longer wanted."""
        self._need_writer().discard_in_progress(doc_id)
        self._sweep_features()

    def touch_document(self, doc_id: int, size: int, mtime_ns: int) -> None:
        """Same content, new size/mtime (e.g. `touch`): remember them so the fast path hits next time."""
        self._need_writer().touch_document(doc_id, size, mtime_ns)

    def remove_documents(self, paths: list[str]) -> int:
        """Forget documents (every version of each path); returns how many paths were known."""
        known = int(self._need_writer().remove_documents(paths))
        self._sweep_features()
        return known

    def refresh(self) -> None:
        """After a run of writes: rebuild the page lists when they lag, compact when dead rows dominate."""
        self._need_writer().maintain()

    def compact(self) -> dict[str, int]:
        """Rewrite the segments holding rows of removed or replaced pages; returns bytes before/after."""
        return dict(self._need_writer().compact())
