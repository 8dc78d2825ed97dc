"""The catalog: one SQLite database (WAL) recording documents, pages and segments.

It is the single source of truth. A page's vectors exist for readers only once the
transaction that records the page (and the segment's new committed length) has
committed; bytes past a segment's committed length are garbage a crash left behind.

Schema (catalog version 2, the baseline; version 1 held float16 vectors and is not read: re-index):
    documents(id, path, size, mtime_ns, sha256, n_pages, status, error, updated_at)
        status: 'indexing' (pages being added, invisible to search), 'done', 'failed'
        at most one 'done'/'failed' row and one 'indexing' row per path
    pages(id, doc_id, page_no (1-based), width, height, segment_id, row_offset, n_tokens)
    page_errors(doc_id, page_no, kind ('error'|'warning'), message)
    segments(id, name, committed_rows)
    meta(key, value): 'generation' grows by one with every commit that changes pages;
        'codebook' (JSON {"file", "coarse", "fine", "trained_on"}) once the index has centroids:
        from that commit on, every segment's codes file covers its committed rows

Schema changes are numbered migrations (MIGRATIONS, below): `PRAGMA user_version` is the
last one applied; a writer applies the missing ones in one transaction (`migrate`). To
change the schema, append a function at the end of this file:

    @migration(3)
    def _m003_page_features(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE page_features (page_id INTEGER PRIMARY KEY REFERENCES pages (id) ON DELETE CASCADE, ...)")

and add a test in tests/test_store.py that upgrades a catalog of the previous version.

Every sqlite3 error of a catalog (damaged file, locked, read-only, disk error) reaches
callers as an IndexStoreError naming the file. Readers open it read-only (URI mode=ro).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from ..errors import IndexStoreError
from .codebook import CODEBOOK_FILE
from .vectors import check_segment_name

CATALOG_FILE = "catalog.sqlite"
BASELINE_VERSION = 2  # the oldest catalog this colrag reads (version 1: float16 vectors, re-index)

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: dict[int, Migration] = {}  # version -> the function that upgrades version - 1 to it


def migration(version: int) -> Callable[[Migration], Migration]:
    """Register the function that brings a catalog from `version - 1` to `version`.

    It runs inside the writer's migration transaction (no COMMIT, no PRAGMA foreign_keys)."""

    def register(fn: Migration) -> Migration:
        if version in MIGRATIONS or (MIGRATIONS and version != max(MIGRATIONS) + 1):
            raise RuntimeError(f"catalog migration {version} is out of sequence")
        MIGRATIONS[version] = fn
        return fn

    return register


# Migrations that only add tables readers can do without (they check for them): a reader opens a
# catalog that lacks them as it is, so an older index keeps answering before a writer upgrades it.
READER_OPTIONAL = {3}


def latest_version() -> int:
    return max(MIGRATIONS)


# -- errors: every sqlite3 failure of a catalog becomes one line naming the file ------------


def store_error(exc: sqlite3.Error, file: str | os.PathLike) -> IndexStoreError:
    msg = str(exc) or type(exc).__name__
    if "malformed" in msg or "not a database" in msg or "file is encrypted" in msg:
        return IndexStoreError(
            f"the catalog {file} cannot be read ({msg}): the index is damaged; move its folder aside and run `colrag index` again"
        )
    if "locked" in msg or "busy" in msg:
        hint = "another process holds it; try again when it has finished"
    elif "readonly" in msg or "read-only" in msg or "unable to open" in msg:
        hint = "check that the index folder can be read (and written, for `colrag index` / `remove`)"
    else:
        hint = "the index may be damaged"
    return IndexStoreError(f"the catalog {file} cannot be used ({msg}): {hint}")


def _wrapped(exc: BaseException) -> bool:
    """SQLite's own failures (not our programming errors: wrong SQL, closed connection, bad parameters)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.ProgrammingError)


class CatalogCursor(sqlite3.Cursor):
    """A cursor whose sqlite3 errors become IndexStoreError (rows of a damaged file fail lazily)."""

    def _err(self, exc: sqlite3.Error) -> IndexStoreError:
        return store_error(exc, getattr(self.connection, "file", "catalog"))

    def execute(self, sql: str, parameters: Any = (), /) -> CatalogCursor:
        try:
            super().execute(sql, parameters)
        except sqlite3.DatabaseError as exc:
            if not _wrapped(exc):
                raise
            raise self._err(exc) from exc
        return self

    def executemany(self, sql: str, seq: Any, /) -> CatalogCursor:
        try:
            super().executemany(sql, seq)
        except sqlite3.DatabaseError as exc:
            if not _wrapped(exc):
                raise
            raise self._err(exc) from exc
        return self

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as exc:
            if not _wrapped(exc):
                raise
            raise self._err(exc) from exc

    def fetchmany(self, size: int | None = None) -> list[Any]:
        try:
            return super().fetchmany(self.arraysize if size is None else size)
        except sqlite3.DatabaseError as exc:
            if not _wrapped(exc):
                raise
            raise self._err(exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as exc:
            if not _wrapped(exc):
                raise
            raise self._err(exc) from exc

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.DatabaseError as exc:
            if not _wrapped(exc):
                raise
            raise self._err(exc) from exc


class CatalogConnection(sqlite3.Connection):
    file: str = "catalog"

    def execute(self, sql: str, parameters: Any = (), /) -> CatalogCursor:
        return self.cursor(CatalogCursor).execute(sql, parameters)

    def executemany(self, sql: str, seq: Any, /) -> CatalogCursor:
        return self.cursor(CatalogCursor).executemany(sql, seq)


# -- opening -----------------------------------------------------------------------------------


def connect(path: Path, *, readonly: bool = False) -> CatalogConnection:
    """Open the catalog. Writers create it; readers open it read-only (WAL lets both run).

    A reader never creates or changes a file: a missing or empty catalog is an IndexStoreError.
    In a folder it cannot write, where SQLite cannot create the WAL index (-shm) a read-only WAL
    database needs, a reader falls back to `immutable=1` (nobody can be writing there)."""
    if readonly:
        try:
            size = path.stat().st_size
        except OSError:
            raise IndexStoreError(f"{path.parent} is not a colrag index: it has no {path.name}") from None
        if size == 0:
            raise IndexStoreError(f"{path.parent} is not a colrag index: its {path.name} is empty (0 bytes)")
        uri = "file:" + quote(str(path.absolute())) + "?mode=ro"
        conn = _open(path, uri)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except IndexStoreError as exc:
            conn.close()
            if not isinstance(exc.__cause__, sqlite3.OperationalError) or _writable(path.parent):
                raise
            conn = _open(path, uri + "&immutable=1")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    else:
        conn = _open(path, None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
        except BaseException:
            conn.close()
            raise
    conn.execute("PRAGMA foreign_keys=ON")
    conn.row_factory = sqlite3.Row
    return conn


def _writable(folder: Path) -> bool:
    if os.access in os.supports_effective_ids:
        return os.access(folder, os.W_OK, effective_ids=True)
    return os.access(folder, os.W_OK)


def _open(path: Path, uri: str | None) -> CatalogConnection:
    try:
        if uri is None:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, factory=CatalogConnection)
        else:
            conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, factory=CatalogConnection)
    except sqlite3.Error as exc:
        raise store_error(exc, path) from exc
    conn.file = str(path)
    return conn


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_version(conn: sqlite3.Connection) -> int:
    """The catalog's version, if this colrag can read it (perhaps after `migrate`); else IndexStoreError."""
    file = getattr(conn, "file", "catalog")
    v = version(conn)
    if v > latest_version():
        raise IndexStoreError(
            f"the catalog {file} has schema version {v}; this colrag reads up to {latest_version()}: upgrade colrag"
        )
    if v == 0:
        if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            raise IndexStoreError(f"{file} is not a colrag catalog (an SQLite database of something else)")
        return 0
    if v < BASELINE_VERSION:
        raise IndexStoreError(f"the catalog has the old schema version {v}: re-index your PDFs into a new --index")
    return v


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the missing migrations in one transaction (a new, empty file gets them all).

    Returns the version the catalog had before. Runs under BEGIN IMMEDIATE, so two processes
    cannot migrate at once and a failed migration leaves the catalog as it was."""
    with transaction(conn):
        before = check_version(conn)
        for v in range(max(before + 1, BASELINE_VERSION), latest_version() + 1):
            MIGRATIONS[v](conn)
        if before != latest_version():
            conn.execute(f"PRAGMA user_version = {latest_version()}")
    return before


def check_schema(conn: sqlite3.Connection) -> None:
    """Refuse a catalog this colrag cannot read as it is (readers; see `migrate` for older ones)."""
    v = check_version(conn)
    if v == 0:
        raise IndexStoreError(f"{getattr(conn, 'file', 'catalog')} is an empty catalog: the index was never created")
    if any(m not in READER_OPTIONAL for m in range(v + 1, latest_version() + 1)):
        raise IndexStoreError(
            f"the catalog {getattr(conn, 'file', 'catalog')} has schema version {v}, older than this colrag's "
            f"{latest_version()}: run `colrag index` on it once (with write access) to upgrade it"
        )


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
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
        if conn.in_transaction:
            conn.execute("COMMIT")


def bump_generation(conn: sqlite3.Connection) -> int:
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    return generation(conn)


def generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    try:
        return int(row[0]) if row else 0
    except (TypeError, ValueError):
        raise IndexStoreError(f"catalog {getattr(conn, 'file', 'catalog')}: meta 'generation' is {row[0]!r}, not a number") from None


def codebook_meta(conn: sqlite3.Connection) -> dict | None:
    """meta 'codebook', checked: {"file": "codebook.npy", "coarse": int > 0, "fine": int > 0, ...}."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'codebook'").fetchone()
    if not row:
        return None
    try:
        book = json.loads(row[0])
    except (TypeError, ValueError):
        book = None
    if (
        not isinstance(book, dict)
        or book.get("file") != CODEBOOK_FILE
        or not all(isinstance(book.get(k), int) and not isinstance(book.get(k), bool) and book[k] > 0 for k in ("coarse", "fine"))
        or book["coarse"] * book["fine"] > 1 << 16
    ):
        raise IndexStoreError(
            f"catalog {getattr(conn, 'file', 'catalog')}: meta 'codebook' is not a colrag codebook record: the index is damaged"
        )
    return book


def segments(conn: sqlite3.Connection) -> dict[int, tuple[str, int]]:
    """id -> (file name, committed rows) of every segment, names and counts checked."""
    file = getattr(conn, "file", "catalog")
    out = {}
    for r in conn.execute("SELECT id, name, committed_rows FROM segments ORDER BY id"):
        rows = r["committed_rows"]
        if not isinstance(rows, int) or rows < 0:
            raise IndexStoreError(f"{file}: segment {r['name']!r} has {rows!r} committed rows: the index is damaged")
        out[int(r["id"])] = (check_segment_name(r["name"], file), rows)
    return out


def now() -> float:
    return time.time()


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


# -- migrations: append new ones at the end, numbered in sequence (see the module docstring) --------


@migration(2)
def _m002_baseline(conn: sqlite3.Connection) -> None:
    """The schema of colrag's first int8 index (catalog version 2): every older index has exactly this."""
    for statement in (
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS segments (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            committed_rows INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE IF NOT EXISTS documents (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,
            size INTEGER,
            mtime_ns INTEGER,
            sha256 TEXT,
            n_pages INTEGER,
            status TEXT NOT NULL CHECK (status IN ('indexing', 'done', 'failed')),
            error TEXT,
            updated_at REAL NOT NULL
        )""",
        "CREATE UNIQUE INDEX IF NOT EXISTS documents_path_state ON documents (path, status = 'indexing')",
        """CREATE TABLE IF NOT EXISTS pages (
            id INTEGER PRIMARY KEY,
            doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            page_no INTEGER NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            segment_id INTEGER NOT NULL REFERENCES segments (id),
            row_offset INTEGER NOT NULL,
            n_tokens INTEGER NOT NULL,
            UNIQUE (doc_id, page_no)
        )""",
        "CREATE INDEX IF NOT EXISTS pages_segment ON pages (segment_id, row_offset)",
        """CREATE TABLE IF NOT EXISTS page_errors (
            doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            page_no INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('error', 'warning')),
            message TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS page_errors_doc ON page_errors (doc_id)",
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0')",
    ):
        conn.execute(statement)


@migration(3)
def _m003_page_features(conn: sqlite3.Connection) -> None:
    """Page features (colrag/store/features.py): where each page's vision-tower output lies in its
    document's features file, and the documents whose features a writer found damaged."""
    for statement in (
        """CREATE TABLE IF NOT EXISTS page_features (
            page_id INTEGER PRIMARY KEY REFERENCES pages (id) ON DELETE CASCADE,
            doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            row_offset INTEGER NOT NULL,
            n_rows INTEGER NOT NULL,
            grid_t INTEGER NOT NULL,
            grid_h INTEGER NOT NULL,
            grid_w INTEGER NOT NULL,
            crc32 INTEGER NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS page_features_doc ON page_features (doc_id, row_offset)",
        "CREATE TABLE IF NOT EXISTS feature_repairs (doc_id INTEGER PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE)",
    ):
        conn.execute(statement)
