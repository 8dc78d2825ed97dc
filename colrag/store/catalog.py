"""The catalog: one SQLite database (WAL) recording documents, pages and segments.

It is the single source of truth. A page's vectors exist for readers only once the
transaction that records the page (and the segment's new committed length) has
committed; bytes past a segment's committed length are garbage a crash left behind.

Schema (SCHEMA_VERSION 2; version 1 held float16 vectors and is not read: re-index):
    documents(id, path, size, mtime_ns, sha256, n_pages, status, error, updated_at)
        status: 'indexing' (pages being added, invisible to search), 'done', 'failed'
        at most one 'done'/'failed' row and one 'indexing' row per path
    pages(id, doc_id, page_no (1-based), width, height, segment_id, row_offset, n_tokens)
    page_errors(doc_id, page_no, kind ('error'|'warning'), message)
    segments(id, name, committed_rows)
    meta(key, value): 'generation' grows by one with every commit that changes pages;
        'codebook' (JSON {"file", "coarse", "fine", "trained_on"}) once the index has centroids:
        from that commit on, every segment's codes file covers its committed rows
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import IndexStoreError

SCHEMA_VERSION = 2
CATALOG_FILE = "catalog.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    committed_rows INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT,
    n_pages INTEGER,
    status TEXT NOT NULL CHECK (status IN ('indexing', 'done', 'failed')),
    error TEXT,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_path_state
    ON documents (path, status = 'indexing');
CREATE TABLE IF NOT EXISTS pages (
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    page_no INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    segment_id INTEGER NOT NULL REFERENCES segments (id),
    row_offset INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    UNIQUE (doc_id, page_no)
);
CREATE INDEX IF NOT EXISTS pages_segment ON pages (segment_id, row_offset);
CREATE TABLE IF NOT EXISTS page_errors (
    doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    page_no INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('error', 'warning')),
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS page_errors_doc ON page_errors (doc_id);
"""


@dataclass(frozen=True)
class Document:
    id: int
    path: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    n_pages: int | None
    status: str
    error: str | None


@dataclass(frozen=True)
class PageRecord:
    id: int
    doc_id: int
    path: str
    page_no: int
    width: int
    height: int
    segment_id: int
    row_offset: int
    n_tokens: int


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the catalog. Writers create it; readers open it read-only (WAL lets both run)."""
    if readonly:
        if not path.is_file():
            raise IndexStoreError(f"no catalog at {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
    conn.execute("PRAGMA foreign_keys=ON")
    conn.row_factory = sqlite3.Row
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise IndexStoreError(
            f"the catalog has schema version {version}; this colrag reads up to {SCHEMA_VERSION}: upgrade colrag"
        )
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        raise IndexStoreError(f"the catalog has the old schema version {version}: re-index your PDFs into a new --index")
    with transaction(conn):
        # executescript() would COMMIT on its own: run the statements one by one inside the transaction
        for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
            conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0')")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def check_schema(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise IndexStoreError(
            f"the catalog has schema version {version}; this colrag reads up to {SCHEMA_VERSION}: upgrade colrag"
        )
    if version < SCHEMA_VERSION:
        raise IndexStoreError(f"the catalog has the old schema version {version}: re-index your PDFs into a new --index")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: every query inside sees the same committed state."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def bump_generation(conn: sqlite3.Connection) -> int:
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    return generation(conn)


def generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0


def codebook_meta(conn: sqlite3.Connection) -> dict | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'codebook'").fetchone()
    return json.loads(row[0]) if row else None


def now() -> float:
    return time.time()


def to_document(row: sqlite3.Row) -> Document:
    return Document(
        id=row["id"], path=row["path"], size=row["size"], mtime_ns=row["mtime_ns"], sha256=row["sha256"],
        n_pages=row["n_pages"], status=row["status"], error=row["error"],
    )


PAGE_COLUMNS = (
    "p.id, p.doc_id, d.path, p.page_no, p.width, p.height, p.segment_id, p.row_offset, p.n_tokens"
)


def to_page(row: sqlite3.Row) -> PageRecord:
    return PageRecord(*row)
