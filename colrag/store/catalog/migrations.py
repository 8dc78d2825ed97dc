"""Numbered catalog migrations: `PRAGMA user_version` is the last one applied.

A writer applies the missing ones in one transaction (`migrate`). To change the schema,
append a function at the end of this file:

    @migration(4)
    def _m004_page_features(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE page_features (page_id INTEGER PRIMARY KEY REFERENCES pages (id), ...)")

and add a test that upgrades a catalog of the previous version. Migration 3 (FAISS vectors)
changes files as well as tables: colrag.store.migrate writes the files first and hands
their names to it (`pending_v3`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from ...errors import IndexStoreError
from .connection import transaction

BASELINE_VERSION = 2  # the oldest catalog this colrag reads (version 1: float16 vectors, re-index)
# Migrations that only add tables readers can do without (they check for them): a reader opens a
# catalog that lacks them as it is, so an older index keeps answering before a writer upgrades it.
READER_OPTIONAL = {3}

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


def latest_version() -> int:
    return max(MIGRATIONS)


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
        "CREATE TABLE IF NOT EXISTS feature_repairs (doc_id INTEGER PRIMARY KEY REFERENCES documents (id) ON "
        "DELETE CASCADE)",
    ):
        conn.execute(statement)


# Migration 4's file part, prepared by colrag.store.migrate before it calls `migrate`.
pending_v3: dict[str, Any] = {}
FAISS_VERSION = 4  # the catalog version from which the vectors are FAISS files


@migration(4)
def _m004_faiss_vectors(conn: sqlite3.Connection) -> None:
    """FAISS vectors: pages get their coarse centroid ids; segments name FAISS SQ8 files; the codebook's
    meta gives way to the coarse centroids'. A catalog with segments needs its files converted first."""
    conn.execute("ALTER TABLE pages ADD COLUMN centroids BLOB")
    has_segments = conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
    if has_segments and not pending_v3:
        raise IndexStoreError(
            "a schema-2 index must be converted by its writer (colrag.store.migrate), not by the catalog alone"
        )
    names: dict[int, str] = pending_v3.get("segments", {})
    conn.executemany("UPDATE segments SET name = ? WHERE id = ?", [(name, sid) for sid, name in names.items()])
    conn.executemany("UPDATE pages SET centroids = ? WHERE id = ?", pending_v3.get("centroids", []))
    conn.execute("DELETE FROM meta WHERE key IN ('codebook', 'lists')")
    if pending_v3.get("coarse") is not None:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('coarse', ?)", (pending_v3["coarse"],))
