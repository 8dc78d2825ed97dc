"""An index folder: manifest + SQLite catalog + int8 vector segments + centroid codes + a cache.

    indexes/<name>/
        manifest.json          format, schema version, retriever identity, dims, render budget
        catalog.sqlite         documents, pages, page errors, segments, codebook (WAL mode)
        vectors/seg-*.i8       page token vectors, int8 rows (unit norm implied), append-only
        vectors/seg-*.codes    each row's centroid id (uint16), appended with the rows
        vectors/codebook.npy   the centroids (written once, when the index reaches CODEBOOK_MIN_ROWS)
        features/doc-*.feat    each page's vision-tower output, one file per document (features.py)
        ann/                   centroid -> pages inverted file (a cache, rebuildable from the codes)
        write.lock             held (fcntl) by the one process writing

Readers (`Index.open`) never lock; a writer (`Index.open_writer`) holds write.lock.
A page becomes visible to search when its document's status turns 'done', in the
same transaction that drops the document's previous version.
"""

from __future__ import annotations

import json
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..bundle import atomic_write_json
from ..errors import IndexStoreError
from ..render import RenderOptions
from . import catalog as cat
from . import codebook as cb
from . import features as pf
from .catalog import Document, PageRecord, transaction
from .lock import LOCK_FILE, WriterLock
from .vectors import (
    CODE_DTYPE,
    CODES_SUFFIX,
    SEGMENTS_DIR,
    VECTOR_DTYPE,
    SegmentReader,
    SegmentWriter,
    codes_name,
    dequantize,
    is_own_file,
    quantize,
    segment_name,
    segment_number,
)

INDEX_FORMAT = "colrag-index"
MANIFEST_FILE = "manifest.json"
# the manifest's schema_version: the layout of the files (int8 segments + codes). The catalog's
# tables have their own version (PRAGMA user_version), upgraded by migrations (catalog.py).
SCHEMA_VERSION = 2
ANN_DIR = "ann"
_CATALOG_FILES = {cat.CATALOG_FILE, cat.CATALOG_FILE + "-wal", cat.CATALOG_FILE + "-shm"}


@dataclass(frozen=True)
class RetrieverInfo:
    """What an index must know about the retriever that filled it."""

    bundle_id: str
    name: str
    dim: int
    max_pixels: int
    vision_hash: str | None = None  # of the vision tower whose output the index keeps as page features
    hidden_size: int = 0

    @classmethod
    def of(cls, retriever) -> RetrieverInfo:
        return cls(str(retriever.bundle_id), str(retriever.name), int(retriever.dim), int(retriever.max_pixels),
                   getattr(retriever, "vision_hash", None), int(getattr(retriever, "hidden_size", 0) or 0))


@dataclass
class Snapshot:
    """A consistent view of the visible pages, read in one SQLite transaction."""

    generation: int
    pages: list[PageRecord]  # ordered by (segment, row offset)
    segments: dict[int, tuple[str, int]]  # id -> (file name, committed rows)
    codebook: dict | None = None  # meta 'codebook' ({"file", "coarse", "fine"}): every segment has codes


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _manifest_for(info: RetrieverInfo, render: RenderOptions) -> dict[str, Any]:
    return {
        "format": INDEX_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "colrag_version": __version__,
        "created_at": cat.now(),
        "retriever": {"bundle_id": info.bundle_id, "name": info.name},
        "dim": info.dim,
        "max_pixels": info.max_pixels,
        "render": render.as_dict(),
        "vector_dtype": "int8",
        "vector_encoding": "int8 per row, max |x| -> 127, unit norm implied (x = q / ||q||)",
        "code_dtype": "uint16",
    }


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST_FILE
    if not path.is_dir():
        raise IndexStoreError(f"no index at {path}: run `colrag index DIR` to create it")
    if not file.is_file():
        raise IndexStoreError(f"{path} is not a colrag index (no {MANIFEST_FILE}); run `colrag index DIR` to create one")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexStoreError(f"unreadable index manifest {file}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise IndexStoreError(f"{path} is not a colrag index ({file} is not a colrag index manifest)")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise IndexStoreError(
            f"index {path} has schema version {version!r}, newer than this colrag reads ({SCHEMA_VERSION}): upgrade colrag"
        )
    if version < SCHEMA_VERSION:
        raise IndexStoreError(
            f"index {path} has the old schema version {version} (float16 vectors); this colrag reads version "
            f"{SCHEMA_VERSION} (int8 vectors + centroid codes): re-index your PDFs into a new --index "
            "(or delete this folder and run `colrag index` again)"
        )
    _check_manifest(manifest, file)
    return manifest


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_manifest(manifest: dict[str, Any], file: Path) -> None:
    """The fields colrag reads, with their types: a damaged manifest is one line, not a traceback."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise IndexStoreError(f"index manifest {file}: {what} (the manifest is damaged: restore it, or re-index into a new --index)")

    retriever = manifest.get("retriever")
    if not isinstance(retriever, dict):
        need(False, "'retriever' must be an object {bundle_id, name}")
        return
    need(isinstance(retriever.get("bundle_id"), str) and bool(retriever["bundle_id"]), "'retriever.bundle_id' must be a non-empty string")
    need(isinstance(retriever.get("name", ""), str), "'retriever.name' must be a string")
    need(_is_int(manifest.get("dim")) and 0 < manifest["dim"] <= 65536, f"'dim' must be a positive integer, not {manifest.get('dim')!r}")
    need(_is_int(manifest.get("max_pixels", 1)) and manifest.get("max_pixels", 1) > 0, "'max_pixels' must be a positive integer")
    render = manifest.get("render", {})
    fields = set(RenderOptions().as_dict())
    need(isinstance(render, dict) and set(render) <= fields, f"'render' must be an object with keys among {sorted(fields)}")
    need(all(_is_int(v) and v > 0 for v in render.values()), "'render' values must be positive integers")


def check_retriever(path: Path, manifest: dict[str, Any], info: RetrieverInfo) -> None:
    built = manifest.get("retriever", {})
    if built.get("bundle_id") != info.bundle_id:
        raise IndexStoreError(
            f"index {path} was built with retriever {built.get('name')!r} (bundle {built.get('bundle_id')}), "
            f"not the one given ({info.name!r}, bundle {info.bundle_id}): use the same retriever, "
            "or index into another --index"
        )
    if int(manifest.get("dim", -1)) != info.dim:
        raise IndexStoreError(f"index {path} holds {manifest.get('dim')}-d vectors; the retriever gives {info.dim}-d ones")


def _features_entry(manifest: dict[str, Any], retriever: RetrieverInfo | None) -> dict[str, Any] | None:
    """The manifest's "page_features" for a writer with this retriever (None: store no features)."""
    current = pf.manifest_info(manifest)
    if retriever is None:
        return current
    if not retriever.vision_hash or retriever.hidden_size <= 0:
        return None  # a retriever that does not name its vision tower: features could never be matched
    if current is not None:
        return current if current["vision_hash"] == retriever.vision_hash and current["hidden_size"] == retriever.hidden_size else None
    return {"vision_hash": retriever.vision_hash, "hidden_size": retriever.hidden_size, "encoding": pf.DEFAULT_ENCODING}


class Index:
    def __init__(self, path: Path, manifest: dict[str, Any], conn, lock: WriterLock | None):
        self.path = path
        self.manifest = manifest
        self.conn = conn
        self.lock = lock
        self.dim = int(manifest["dim"])
        self.render = RenderOptions(**manifest.get("render", {}))
        self.reader = SegmentReader(path / SEGMENTS_DIR, self.dim)
        self._writer: SegmentWriter | None = None
        self._writer_segment_id: int | None = None
        self._codebook: cb.Codebook | None = None
        self._snapshot: Snapshot | None = None  # a reader's last snapshot, reused while the generation holds
        self._features: pf.FeatureWriter | None = None  # set by open_writer when this index keeps page features
        self.repair_notes: list[str] = []  # what the writer's repair at open found (damaged page features)

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, retriever: RetrieverInfo | None = None) -> Index:
        """Open for reading (no lock; works while a writer runs)."""
        path = Path(path)
        manifest = read_manifest(path)
        if retriever is not None:
            check_retriever(path, manifest, retriever)
        file = path / cat.CATALOG_FILE
        conn = cat.connect(file, readonly=True)  # never creates or changes a file
        try:
            if 0 < cat.check_version(conn) < cat.latest_version():
                conn.close()
                _upgrade_catalog(path)
                conn = cat.connect(file, readonly=True)
            cat.check_schema(conn)
        except BaseException:
            conn.close()
            raise
        return cls(path, manifest, conn, None)

    @classmethod
    def open_writer(cls, path: str | os.PathLike, retriever: RetrieverInfo | None, render: RenderOptions | None = None,
                    *, page_features: bool = True) -> Index:
        """Open (or create) for writing: takes write.lock and repairs what a crash left.

        `retriever` is required to create an index and checked against an existing one;
        None opens an existing index for maintenance (remove) without that check.
        page_features: keep the pages' vision-tower output (add_pages' `features`) when the
        retriever names its vision tower (vision_hash); False stores none from this run.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise IndexStoreError(f"{path} is a file, not an index folder")
        fresh = not (path / MANIFEST_FILE).is_file()
        if fresh and retriever is None:
            read_manifest(path)  # raises the "no index" error
        if fresh and path.is_dir():
            strangers = _not_creation_leftovers(path)
            if strangers:
                raise IndexStoreError(
                    f"{path} exists and is not a colrag index (it holds {', '.join(strangers[:3])}); "
                    "colrag creates an index only in a new or empty folder: choose another --index"
                )
        if not fresh:
            read_manifest(path)  # a damaged manifest is refused before anything is touched
            _refuse_links(path)
            catalog = path / cat.CATALOG_FILE
            if not catalog.is_file() or catalog.stat().st_size == 0:
                raise IndexStoreError(
                    f"index {path} is damaged: its {cat.CATALOG_FILE} is missing or empty, so nothing says which "
                    "vectors are valid; move the folder aside and run `colrag index` into a new --index"
                )
        path.mkdir(parents=True, exist_ok=True)
        (path / SEGMENTS_DIR).mkdir(exist_ok=True)
        lock = WriterLock(path).acquire()
        conn = None
        try:
            if fresh:
                manifest = _manifest_for(retriever, render or RenderOptions())
            else:
                manifest = read_manifest(path)
                if retriever is not None:
                    check_retriever(path, manifest, retriever)
            conn = cat.connect(path / cat.CATALOG_FILE)
            cat.migrate(conn)
            features = _features_entry(manifest, retriever) if page_features else None
            if features is not None and pf.manifest_info(manifest) is None:
                manifest = {**manifest, "page_features": features}
                if not fresh:  # an older index gains features for the pages indexed from now on
                    atomic_write_json(path / MANIFEST_FILE, manifest)
            if fresh:  # the manifest is written last: its presence means the index exists
                atomic_write_json(path / MANIFEST_FILE, manifest)
            index = cls(path, manifest, conn, lock)
            index._repair()
            if features is not None:
                index._features = pf.FeatureWriter(path / pf.FEATURES_DIR, features["hidden_size"], features["encoding"])
            return index
        except BaseException:
            if conn is not None:
                conn.close()
            lock.release()
            raise

    def close(self) -> None:
        if self._features is not None:
            self._features.close()
            self._features = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.reader.close()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        return self.lock is not None and self.lock.held

    def _need_writer(self) -> None:
        if not self.writable:
            raise RuntimeError("this Index was opened read-only")

    # -- reading -------------------------------------------------------------------
    def generation(self) -> int:
        return cat.generation(self.conn)

    def snapshot(self) -> Snapshot:
        """The visible pages. A read-only Index reuses its last snapshot while the catalog
        generation is unchanged (the visible pages are then the same; at 100,000 pages a
        snapshot takes ~0.25 s to read)."""
        if self.lock is None and self._snapshot is not None and self._snapshot.generation == self.generation():
            return self._snapshot
        with cat.snapshot(self.conn):
            gen = cat.generation(self.conn)
            segments = cat.segments(self.conn)
            rows = self.conn.execute(
                f"SELECT {cat.PAGE_COLUMNS} FROM pages p JOIN documents d ON d.id = p.doc_id "
                "WHERE d.status = 'done' ORDER BY p.segment_id, p.row_offset"
            ).fetchall()
            book = cat.codebook_meta(self.conn)
        snap = Snapshot(gen, [PageRecord(*r) for r in rows], segments, book)
        if self.lock is None:
            self._snapshot = snap
        return snap

    def page_rows(self, snap: Snapshot, page: PageRecord) -> np.ndarray:
        """The page's stored (n_tokens, dim) int8 rows (a read-only memmap view)."""
        name, rows = snap.segments[page.segment_id]
        return self.reader.rows(name, rows)[page.row_offset : page.row_offset + page.n_tokens]

    def prefetch(self, snap: Snapshot, pages: list[PageRecord]) -> None:
        """Hint that these pages' rows are about to be read (SegmentReader.willneed)."""
        spans: dict[int, list[tuple[int, int]]] = {}
        for page in pages:
            spans.setdefault(page.segment_id, []).append((page.row_offset, page.n_tokens))
        for segment_id, wanted in spans.items():
            name, rows = snap.segments[segment_id]
            self.reader.willneed(name, rows, wanted)

    def page_vectors(self, snap: Snapshot, page: PageRecord) -> np.ndarray:
        """The page's (n_tokens, dim) float32 unit rows, dequantized from the stored int8."""
        return dequantize(self.page_rows(snap, page))

    def page_codes(self, snap: Snapshot, page: PageRecord) -> np.ndarray:
        """The page's (n_tokens,) uint16 centroid ids (the snapshot must have a codebook)."""
        name, rows = snap.segments[page.segment_id]
        return self.reader.codes(name, rows)[page.row_offset : page.row_offset + page.n_tokens]

    def segment_codes(self, snap: Snapshot, segment_id: int) -> np.ndarray:
        name, rows = snap.segments[segment_id]
        return self.reader.codes(name, rows)

    def segment_rows(self, snap: Snapshot, segment_id: int) -> np.ndarray:
        name, rows = snap.segments[segment_id]
        return self.reader.rows(name, rows)

    def codebook(self, snap: Snapshot) -> cb.Codebook | None:
        """The centroids the snapshot's codes refer to (None while the index is too small to have them)."""
        if snap.codebook is None:
            return None
        if self._codebook is None:
            file = self.path / SEGMENTS_DIR / snap.codebook["file"]
            try:
                arr = np.load(file, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise IndexStoreError(f"unreadable codebook {file} ({exc}): the index is damaged; rebuild it") from None
            self._codebook = cb.Codebook.from_array(arr, int(snap.codebook["coarse"]))
        return self._codebook

    def documents(self, status: str | None = None) -> list[Document]:
        q = "SELECT * FROM documents" + (" WHERE status = ?" if status else "") + " ORDER BY path, status"
        return [cat.to_document(r) for r in self.conn.execute(q, (status,) if status else ())]

    def page_errors(self, doc_id: int | None = None) -> list[tuple[str, int, str, str]]:
        """(path, page_no, kind, message) for visible (done) documents, or one document."""
        q = (
            "SELECT d.path, e.page_no, e.kind, e.message FROM page_errors e JOIN documents d ON d.id = e.doc_id "
            + ("WHERE d.id = ? " if doc_id is not None else "WHERE d.status = 'done' ")
            + "ORDER BY d.path, e.page_no"
        )
        return [tuple(r) for r in self.conn.execute(q, (doc_id,) if doc_id is not None else ())]

    def lookup(self, path: str) -> tuple[Document | None, Document | None]:
        """(the document's current 'done'/'failed' row, its 'indexing' row) for a path."""
        current = indexing = None
        for r in self.conn.execute("SELECT * FROM documents WHERE path = ?", (path,)):
            doc = cat.to_document(r)
            if doc.status == "indexing":
                indexing = doc
            else:
                current = doc
        return current, indexing

    def stored_page_numbers(self, doc_id: int) -> set[int]:
        """Pages of a document already committed (stored or recorded as failed)."""
        done = {r[0] for r in self.conn.execute("SELECT page_no FROM pages WHERE doc_id = ?", (doc_id,))}
        done |= {r[0] for r in self.conn.execute("SELECT page_no FROM page_errors WHERE doc_id = ? AND kind = 'error'", (doc_id,))}
        return done

    def stats(self) -> dict[str, Any]:
        c = self.conn
        with cat.snapshot(c):
            by_status = dict(c.execute("SELECT status, COUNT(*) FROM documents GROUP BY status").fetchall())
            pages, tokens = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(n_tokens), 0) FROM pages p JOIN documents d ON d.id = p.doc_id WHERE d.status = 'done'"
            ).fetchone()
            all_tokens = c.execute("SELECT COALESCE(SUM(n_tokens), 0) FROM pages").fetchone()[0]
            rows = c.execute("SELECT COALESCE(SUM(committed_rows), 0) FROM segments").fetchone()[0]
            failed = [
                {"path": r["path"], "error": r["error"]}
                for r in c.execute("SELECT path, error FROM documents WHERE status = 'failed' ORDER BY path")
            ]
            page_failures = c.execute(
                "SELECT COUNT(*) FROM page_errors e JOIN documents d ON d.id = e.doc_id WHERE d.status = 'done' AND e.kind = 'error'"
            ).fetchone()[0]
            gen = cat.generation(c)
            book = cat.codebook_meta(c)
        size = _disk_usage(self.path)
        row_bytes = self.dim * VECTOR_DTYPE.itemsize + (CODE_DTYPE.itemsize if book else 0)
        return {
            "index": str(self.path),
            "retriever": self.manifest.get("retriever", {}),
            "generation": gen,
            "documents": int(by_status.get("done", 0)),
            "failed_documents": len(failed),
            "documents_in_progress": int(by_status.get("indexing", 0)),
            "pages": int(pages),
            "failed_pages": int(page_failures),
            "tokens": int(tokens),
            "bytes_on_disk": size,
            "vector_bytes": int(rows) * row_bytes,
            "dead_vector_bytes": int(rows - all_tokens) * row_bytes,
            "centroids": int(book["coarse"]) * int(book["fine"]) if book else 0,
            **pf.stats(c, self.path / pf.FEATURES_DIR, pf.manifest_info(self.manifest)),
            "failed": failed,
        }

    def check(self, *, vectors: bool = True) -> CheckReport:
        """Verify catalog <-> vectors consistency. Returns problems (damage) and notes (harmless)."""
        report = CheckReport()
        c = self.conn
        if c.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            report.problems.append("SQLite integrity_check failed")
        if c.execute("PRAGMA foreign_key_check").fetchall():
            report.problems.append("catalog rows point at missing documents or segments")
        row_bytes = self.dim * VECTOR_DTYPE.itemsize
        with cat.snapshot(c):
            book = cat.codebook_meta(c)
            segments = cat.segments(c)
            pages = c.execute("SELECT * FROM pages ORDER BY segment_id, row_offset").fetchall()
            docs = c.execute(
                "SELECT d.id, d.path, d.n_pages, "
                "(SELECT COUNT(*) FROM pages p WHERE p.doc_id = d.id) + "
                "(SELECT COUNT(*) FROM page_errors e WHERE e.doc_id = d.id AND e.kind = 'error') AS seen "
                "FROM documents d WHERE d.status = 'done'"
            ).fetchall()
        for sid, (name, rows) in segments.items():
            file = self.path / SEGMENTS_DIR / name
            if not file.is_file():
                report.problems.append(f"segment {name} is missing")
                continue
            size = file.stat().st_size
            if size < rows * row_bytes:
                report.problems.append(f"segment {name} has {size} bytes, the catalog committed {rows * row_bytes}")
            elif size > rows * row_bytes:
                report.notes.append(f"segment {name} has {size - rows * row_bytes} uncommitted tail bytes (ignored)")
            if book:
                codes = self.path / SEGMENTS_DIR / codes_name(name)
                csize = codes.stat().st_size if codes.is_file() else -1
                if csize < rows * CODE_DTYPE.itemsize:
                    report.problems.append(f"codes of segment {name} are missing or short ({max(csize, 0)} bytes, need {rows * CODE_DTYPE.itemsize})")
        known = {name for name, _ in segments.values()}
        if book:
            known |= {codes_name(name) for name, _ in segments.values()} | {book["file"]}
            if not (self.path / SEGMENTS_DIR / book["file"]).is_file():
                report.problems.append(f"the codebook {SEGMENTS_DIR}/{book['file']} is missing")
        seg_dir = self.path / SEGMENTS_DIR
        if seg_dir.is_dir():
            for file in seg_dir.iterdir():
                if file.name not in known:
                    report.notes.append(f"unreferenced file {SEGMENTS_DIR}/{file.name} (ignored)")
        last_end: dict[int, int] = {}
        for p in pages:
            sid = p["segment_id"]
            if sid not in segments:
                report.problems.append(f"page {p['id']} points at unknown segment {sid}")
                continue
            start, n = p["row_offset"], p["n_tokens"]
            if n <= 0 or start < 0 or start + n > segments[sid][1]:
                report.problems.append(f"page {p['id']} rows [{start}, {start + n}) are outside segment {segments[sid][0]}'s committed rows")
            if start < last_end.get(sid, 0):
                report.problems.append(f"page {p['id']} overlaps another page in segment {segments[sid][0]}")
            last_end[sid] = max(last_end.get(sid, 0), start + n)
        for d in docs:
            if d["n_pages"] is not None and d["seen"] != d["n_pages"]:
                report.problems.append(f"{d['path']}: {d['seen']} of its {d['n_pages']} pages are recorded")
        if vectors and not report.problems:
            n_centroids = int(book["coarse"]) * int(book["fine"]) if book else 0
            for sid, (name, rows) in segments.items():
                mat = self.reader.rows(name, rows)
                codes = self.reader.codes(name, rows) if book else None
                for start in range(0, rows, 1 << 16):
                    # a quantized unit vector has max |q| = 127 (a zeroed row cannot be one)
                    peak = np.abs(np.asarray(mat[start : start + (1 << 16)], dtype=np.int16)).max(axis=1)
                    if np.any(peak != 127):
                        bad = start + int(np.argmax(peak != 127))
                        report.problems.append(f"segment {name} row {bad} is not a quantized unit vector (max |q| {peak[bad - start]})")
                        break
                    if codes is not None and np.any(codes[start : start + (1 << 16)] >= n_centroids):
                        report.problems.append(f"codes of segment {name} near row {start} exceed the {n_centroids} centroids")
                        break
        problems, notes = pf.check(c, self.path / pf.FEATURES_DIR, pf.manifest_info(self.manifest), deep=vectors)
        report.problems += problems
        report.notes += notes
        return report

    # -- writing -------------------------------------------------------------------
    def _repair(self) -> None:
        """Drop crash leftovers: uncommitted segment tails and files no commit references.

        Only names colrag writes (vectors.is_own_file) are ever deleted or truncated; anything
        else in vectors/ is left alone (and noted by check())."""
        committed = dict(cat.segments(self.conn).values())
        book = cat.codebook_meta(self.conn)
        keep: dict[str, int | None] = {name: rows * self.dim * VECTOR_DTYPE.itemsize for name, rows in committed.items()}
        if book:  # codes exist (and are committed) only once the catalog names a codebook
            keep |= {codes_name(name): rows * CODE_DTYPE.itemsize for name, rows in committed.items()}
            keep[book["file"]] = None
        seg_dir = self.path / SEGMENTS_DIR
        for file in seg_dir.iterdir():
            if not is_own_file(file.name):
                continue
            if file.is_symlink() or not file.is_file():
                raise IndexStoreError(f"{file} is not a regular file: colrag does not follow links inside an index; remove it")
            if file.name not in keep:
                file.unlink()  # written by a writer that died before the commit referencing it
            elif keep[file.name] is not None and file.stat().st_size > keep[file.name]:
                with open(file, "r+b") as f:
                    f.truncate(keep[file.name])
                    os.fsync(f.fileno())
        info = pf.manifest_info(self.manifest)
        if info is not None:
            self.repair_notes = pf.repair(self.conn, self.path / pf.FEATURES_DIR, info["hidden_size"], info["encoding"], transaction)

    def _segment_writer(self) -> SegmentWriter:
        if self._writer is not None and not self._writer.full:
            return self._writer
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        row = self.conn.execute("SELECT id, name, committed_rows FROM segments ORDER BY id DESC LIMIT 1").fetchone()
        seg_dir = self.path / SEGMENTS_DIR
        with_codes = cat.codebook_meta(self.conn) is not None
        if row is not None:
            w = SegmentWriter(seg_dir, self.dim, row["name"], row["committed_rows"], with_codes)
            if not w.full:
                self._writer, self._writer_segment_id = w, row["id"]
                return w
            w.close()
        number = (segment_number(row["name"]) or 0) + 1 if row is not None else 1
        self._writer = SegmentWriter(seg_dir, self.dim, segment_name(number), 0, with_codes)
        self._writer_segment_id = None  # inserted into the catalog with its first commit
        return self._writer

    def begin_document(self, path: str, size: int, mtime_ns: int, sha256: str, n_pages: int) -> int:
        """Start (or restart) indexing a document version; its pages stay invisible until finish_document."""
        self._need_writer()
        with transaction(self.conn) as c:
            c.execute("DELETE FROM documents WHERE path = ? AND status = 'indexing'", (path,))
            cur = c.execute(
                "INSERT INTO documents (path, size, mtime_ns, sha256, n_pages, status, updated_at) VALUES (?, ?, ?, ?, ?, 'indexing', ?)",
                (path, size, mtime_ns, sha256, n_pages, cat.now()),
            )
            return int(cur.lastrowid)

    def add_pages(
        self,
        doc_id: int,
        pages: list[tuple[int, int, int, np.ndarray]],
        errors: list[tuple[int, str, str]] = (),
        features: list[pf.ImageFeatures | None] | None = None,
    ) -> None:
        """Store pages (page_no, width, height, (n_tokens, dim) vectors) and page errors/warnings
        (page_no, kind, message) of an 'indexing' document, in one commit. `features`: one
        ImageFeatures (or None) per page, kept when this index keeps page features."""
        self._need_writer()
        writer = self._segment_writer() if pages else None
        feats = self._features if features is not None and self._features is not None else None
        new_book: dict | None = None
        starting = False
        try:
            for page_no, _, _, vecs in pages:
                if len(vecs) == 0:
                    raise ValueError(f"page {page_no} has no vectors")
                if np.ndim(vecs) != 2 or np.shape(vecs)[1] != self.dim:
                    raise ValueError(f"page {page_no}: vectors of shape {np.shape(vecs)}, expected (n, {self.dim})")
                if not np.all(np.isfinite(vecs)):
                    raise ValueError(f"page {page_no}: non-finite vectors")
            if pages:
                q8 = quantize(np.concatenate([np.asarray(v, dtype=np.float32) for _, _, _, v in pages]))  # (n_rows, dim)
                if not writer.with_codes and self._rows_stored() + len(q8) >= cb.CODEBOOK_MIN_ROWS:
                    starting = True
                    new_book = self._start_codebook(writer, q8)
                book = self._loaded_codebook() if writer.with_codes else None
                codes = book.assign(dequantize(q8)) if book is not None else None  # (n_rows,)
                placed, start = [], 0
                for page_no, width, height, vecs in pages:
                    n = len(vecs)
                    off = writer.append(q8[start : start + n], None if codes is None else codes[start : start + n])
                    placed.append((page_no, width, height, off, n))
                    start += n
            if feats is not None:
                for (page_no, *_), page_feats in zip(pages, features or [], strict=True):
                    if page_feats is not None:
                        feats.append(self.conn, doc_id, page_no, page_feats)
                feats.sync()
            rows = writer.sync() if writer else 0
            with transaction(self.conn) as c:
                if new_book is not None:
                    c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('codebook', ?)", (json.dumps(new_book),))
                if writer is not None:
                    if self._writer_segment_id is None:
                        cur = c.execute("INSERT INTO segments (name, committed_rows) VALUES (?, ?)", (writer.name, rows))
                        seg_id = int(cur.lastrowid)
                    else:
                        seg_id = self._writer_segment_id
                        c.execute("UPDATE segments SET committed_rows = ? WHERE id = ?", (rows, seg_id))
                    c.executemany(
                        "INSERT INTO pages (doc_id, page_no, width, height, segment_id, row_offset, n_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(doc_id, no, w, h, seg_id, off, n) for no, w, h, off, n in placed],
                    )
                c.executemany("INSERT INTO page_errors (doc_id, page_no, kind, message) VALUES (?, ?, ?, ?)", [(doc_id, *e) for e in errors])
                if feats is not None:
                    feats.record(c, doc_id)
        except BaseException:
            if feats is not None:
                feats.rollback()
            if writer is not None:
                writer.rollback(drop_codes=starting)
            if starting:  # the codebook never committed: no codes may stay behind
                self._codebook = None
                seg_dir = self.path / SEGMENTS_DIR
                for f in [*seg_dir.glob("*" + CODES_SUFFIX), seg_dir / cb.CODEBOOK_FILE]:
                    if is_own_file(f.name):
                        f.unlink(missing_ok=True)
            raise
        if feats is not None:
            feats.committed()
        if writer is not None:
            writer.committed()
            self._writer_segment_id = seg_id

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
            with transaction(self.conn) as c:
                self._features.record(c, doc_id)
                if not pf.pages_without_features(c, doc_id) or not features:
                    c.execute("DELETE FROM feature_repairs WHERE doc_id = ?", (doc_id,))
        except BaseException:
            self._features.rollback()
            raise
        self._features.committed()

    def _sweep_features(self) -> None:
        """After a commit that may have deleted documents: delete their feature files (space back at once)."""
        if self._features is not None:
            self._features.close()  # its document may be the one gone
        pf.sweep(self.conn, self.path / pf.FEATURES_DIR)

    def _rows_stored(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(SUM(committed_rows), 0) FROM segments").fetchone()[0])

    def _loaded_codebook(self) -> cb.Codebook:
        if self._codebook is None:
            book = cat.codebook_meta(self.conn)
            arr = np.load(self.path / SEGMENTS_DIR / book["file"], allow_pickle=False)
            self._codebook = cb.Codebook.from_array(arr, int(book["coarse"]))
        return self._codebook

    def _start_codebook(self, writer: SegmentWriter, new_rows: np.ndarray) -> dict:
        """Train the centroids on the stored rows + the batch being added, and write the codes of
        every committed row (files only: the caller's transaction commits them with the codebook)."""
        rng = np.random.default_rng(0)
        segs = list(cat.segments(self.conn).values())  # (name, committed rows), in id order
        stored = sum(rows for _, rows in segs)
        total = stored + len(new_rows)
        want = np.sort(rng.choice(total, size=min(total, cb.TRAIN_ROWS), replace=False))
        sample, base = [], 0
        for name, rows in segs:
            sel = want[(want >= base) & (want < base + rows)] - base
            if len(sel):
                sample.append(dequantize(self.reader.rows(name, rows)[sel]))
            base += rows
        sample.append(dequantize(new_rows[want[want >= stored] - stored]))
        book = cb.train(np.concatenate(sample))
        seg_dir = self.path / SEGMENTS_DIR
        tmp = seg_dir / (cb.CODEBOOK_FILE + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, book.to_array(), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(seg_dir / cb.CODEBOOK_FILE)
        self._codebook = book
        for name, rows in segs:
            mat = self.reader.rows(name, rows)
            codes = np.concatenate(
                [book.assign(dequantize(mat[s : s + (1 << 16)])) for s in range(0, len(mat), 1 << 16)] or [np.zeros(0, np.uint16)]
            )
            if name == writer.name:
                writer.start_codes(codes)
            else:
                with open(seg_dir / codes_name(name), "wb") as f:
                    f.write(codes.astype(CODE_DTYPE).tobytes())
                    f.flush()
                    os.fsync(f.fileno())
        if not writer.with_codes:  # a segment the catalog does not know yet
            writer.start_codes(np.zeros(0, dtype=CODE_DTYPE))
        return {"file": cb.CODEBOOK_FILE, "coarse": book.n_coarse, "fine": book.n_fine, "trained_on": int(total)}

    def finish_document(self, doc_id: int) -> None:
        """Make a document's pages visible, replacing the previous version of its path."""
        self._need_writer()
        with transaction(self.conn) as c:
            row = c.execute("SELECT path FROM documents WHERE id = ?", (doc_id,)).fetchone()
            c.execute("DELETE FROM documents WHERE path = ? AND id != ?", (row["path"], doc_id))
            c.execute("UPDATE documents SET status = 'done', error = NULL, updated_at = ? WHERE id = ?", (cat.now(), doc_id))
            cat.bump_generation(c)
        self._sweep_features()

    def record_failure(self, path: str, size: int | None, mtime_ns: int | None, sha256: str | None, error: str) -> None:
        """The whole file could not be indexed: replace whatever the path had with a 'failed' row."""
        self._need_writer()
        with transaction(self.conn) as c:
            c.execute("DELETE FROM documents WHERE path = ?", (path,))
            c.execute(
                "INSERT INTO documents (path, size, mtime_ns, sha256, status, error, updated_at) VALUES (?, ?, ?, ?, 'failed', ?, ?)",
                (path, size, mtime_ns, sha256, error, cat.now()),
            )
            cat.bump_generation(c)
        self._sweep_features()

    def discard_in_progress(self, doc_id: int) -> None:
        """Drop an interrupted 'indexing' version that is no longer wanted."""
        self._need_writer()
        with transaction(self.conn) as c:
            c.execute("DELETE FROM documents WHERE id = ? AND status = 'indexing'", (doc_id,))
        self._sweep_features()

    def touch_document(self, doc_id: int, size: int, mtime_ns: int) -> None:
        """Same content, new size/mtime (e.g. `touch`): remember them so the fast path hits next time."""
        self._need_writer()
        with transaction(self.conn) as c:
            c.execute("UPDATE documents SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, doc_id))

    def remove_documents(self, paths: list[str]) -> int:
        """Forget documents (every version of each path); returns how many paths were known."""
        self._need_writer()
        with transaction(self.conn) as c:
            known = 0
            for path in paths:
                known += c.execute("DELETE FROM documents WHERE path = ?", (path,)).rowcount > 0
            if known:
                cat.bump_generation(c)
        self._sweep_features()
        return known

    def paths_under(self, folder: str) -> list[str]:
        """Catalogued paths inside a folder (recursively)."""
        prefix = folder.rstrip(os.sep) + os.sep
        return [r[0] for r in self.conn.execute("SELECT DISTINCT path FROM documents") if r[0].startswith(prefix)]


def _disk_usage(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except FileNotFoundError:  # a writer replaced or removed it meanwhile
            pass
    return total


def _upgrade_catalog(path: Path) -> None:
    """Bring an older catalog up to date for a reader: the migrations, under the writer lock."""
    file = path / cat.CATALOG_FILE
    try:
        lock = WriterLock(path).acquire()
    except IndexStoreError as exc:
        with closing(cat.connect(file, readonly=True)) as conn:  # a writer (which migrates on open) may hold the lock
            if cat.check_version(conn) == cat.latest_version():
                return
        raise IndexStoreError(
            f"index {path} has an older catalog that needs a one-time upgrade, and {exc}: "
            "run `colrag index` on it (with write access) once"
        ) from None
    try:
        conn = cat.connect(file)
        try:
            cat.migrate(conn)
        finally:
            conn.close()
    finally:
        lock.release()


def _refuse_links(path: Path) -> None:
    """A writer deletes and truncates files in vectors/ and ann/: never through a link."""
    for name in (SEGMENTS_DIR, ANN_DIR, pf.FEATURES_DIR):
        sub = path / name
        if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
            raise IndexStoreError(
                f"{sub} is a link or not a folder: colrag does not write through links inside an index; "
                "replace it with a real folder (or move the index)"
            )


def _not_creation_leftovers(path: Path) -> list[str]:
    """Entries of a folder without a manifest that an interrupted `colrag index` did not leave.

    Creating an index writes write.lock, an empty vectors/ and the catalog before the manifest;
    anything else (or one of these names holding something else) means the folder is not ours."""
    strangers = []
    for entry in sorted(path.iterdir()):
        name = entry.name
        if entry.is_symlink():
            strangers.append(name)
        elif name == SEGMENTS_DIR and entry.is_dir() and not any(entry.iterdir()) or name == LOCK_FILE and entry.is_file() and entry.stat().st_size <= 32 or name in _CATALOG_FILES and entry.is_file() and _empty_catalog(path / cat.CATALOG_FILE):
            continue
        else:
            strangers.append(name)
    return strangers


def _empty_catalog(file: Path) -> bool:
    """The catalog file is absent, empty, or a colrag catalog with no documents and no segments."""
    if not file.exists() or (file.is_file() and file.stat().st_size == 0):
        return True
    try:
        with closing(cat.connect(file, readonly=True)) as conn:
            if cat.check_version(conn) == 0:
                return True
            return not conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0] and not conn.execute(
                "SELECT COUNT(*) FROM segments"
            ).fetchone()[0]
    except IndexStoreError:
        return False
