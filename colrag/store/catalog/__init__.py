"""The catalog: one SQLite database (WAL) recording documents, pages and vector files. All of
the store's SQL lives in this package (connection.py: opening and errors; migrations.py: the
schema's numbered migrations; writes.py: the write statements; here: the records and the
reads), and every string it stores is valid UTF-8 (colrag.utf8.text: file names and mupdf
messages may hold surrogate escapes, which SQLite refuses).

It is the single source of truth. A page's vectors exist for readers only once the
transaction that records the page (and its segment's new file version and row count)
has committed; a segment version or lists file no committed row names is a leftover of
an interrupted write.

Schema (catalog version 4; 2 and 3 are upgraded in place by colrag.store.migrate; 1 is refused;
page_features / feature_repairs (migration 3): colrag/store/features.py):
    documents(id, path, size, mtime_ns, sha256, n_pages, status, error, updated_at)
        status: 'indexing' (pages being added, invisible to search), 'done', 'failed'
        at most one 'done'/'failed' row and one 'indexing' row per path
    pages(id, doc_id, page_no (1-based), width, height, segment_id, row_offset, n_tokens, centroids)
        centroids: the distinct coarse centroid ids of the page's tokens (uint16 little-endian),
        NULL while the index has no coarse centroids
    page_errors(doc_id, page_no, kind ('error'|'warning'), message)
    segments(id, name (the committed FAISS file version), committed_rows)
    meta(key, value): 'generation' grows by one with every commit that changes what search sees;
        'coarse' (JSON {"file", "n_centroids", "trained_on"}) once trained: from that commit on every
        page has its centroids; 'lists' (JSON {"file", "generation"}): the saved page lists
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from ...errors import IndexStoreError
from ...utf8 import text
from .. import faiss_io
from .connection import CatalogConnection, connect, snapshot, store_error, transaction
from .migrations import (
    BASELINE_VERSION,
    FAISS_VERSION,
    MIGRATIONS,
    READER_OPTIONAL,
    check_schema,
    check_version,
    latest_version,
    migrate,
    migration,
    version,
)
from .writes import (
    bump_generation,
    delete_document,
    delete_documents,
    delete_pages,
    delete_segment,
    document_path,
    insert_document,
    insert_page_errors,
    insert_pages,
    mark_done,
    move_pages,
    now,
    save_segment,
    set_meta,
    set_page_centroids,
    touch_document,
)

CATALOG_FILE = "catalog.sqlite"
SCHEMA_VERSION = latest_version()
__all__ = [
    "BASELINE_VERSION",
    "CATALOG_FILE",
    "FAISS_VERSION",
    "MIGRATIONS",
    "READER_OPTIONAL",
    "SCHEMA_VERSION",
    "CatalogConnection",
    "Document",
    "PageRecord",
    "bump_generation",
    "check_schema",
    "check_version",
    "connect",
    "delete_document",
    "delete_documents",
    "delete_pages",
    "delete_segment",
    "document_path",
    "insert_document",
    "insert_page_errors",
    "insert_pages",
    "latest_version",
    "mark_done",
    "migrate",
    "migration",
    "move_pages",
    "now",
    "save_segment",
    "set_meta",
    "set_page_centroids",
    "snapshot",
    "store_error",
    "touch_document",
    "transaction",
    "version",
]


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


PAGE_COLUMNS = "p.id, p.doc_id, d.path, p.page_no, p.width, p.height, p.segment_id, p.row_offset, p.n_tokens"


# -- meta ----------------------------------------------------------------------------
def generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0


def get_meta(conn: sqlite3.Connection, key: str) -> Any:
    """meta 'coarse' or 'lists', checked (file names are ones colrag writes), or None."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    try:
        value = json.loads(row[0])
    except (TypeError, ValueError):
        value = None
    numbers = {"coarse": ("n_centroids",), "lists": ("generation", "max_page_id")}[key]
    if not (
        isinstance(value, dict)
        and isinstance(value.get("file"), str)
        and faiss_io.FAISS_NAME.match(value["file"])
        and all(isinstance(value.get(k), int) and not isinstance(value.get(k), bool) and value[k] >= 0 for k in numbers)
    ):
        raise IndexStoreError(
            f"catalog {getattr(conn, 'file', 'catalog')}: meta {key!r} is not a colrag record: the index is damaged"
        )
    return value


# -- reading -------------------------------------------------------------------------
def segments(conn: sqlite3.Connection, *, check_names: bool = True) -> dict[int, tuple[str, int]]:
    """id -> (file name, committed rows) of every segment, counts checked, names checked to be FAISS
    segment versions colrag writes (check_names=False: schema 2's names, for its upgrade)."""
    file = getattr(conn, "file", "catalog")
    out = {}
    for r in conn.execute("SELECT id, name, committed_rows FROM segments ORDER BY id"):
        rows = r["committed_rows"]
        if not isinstance(rows, int) or rows < 0:
            raise IndexStoreError(f"{file}: segment {r['name']!r} has {rows!r} committed rows: the index is damaged")
        name = r["name"]
        if check_names and not (isinstance(name, str) and faiss_io.FAISS_NAME.match(name) and name.startswith("seg-")):
            raise IndexStoreError(f"{file}: segment name {name!r} is not one colrag writes: the index is damaged")
        out[int(r["id"])] = (name, rows)
    return out


def last_segment(conn: sqlite3.Connection) -> tuple[int, str, int] | None:
    segs = segments(conn)
    if not segs:
        return None
    sid = max(segs)
    return sid, *segs[sid]


def visible_pages(conn: sqlite3.Connection) -> list[PageRecord]:
    rows = conn.execute(
        f"SELECT {PAGE_COLUMNS} FROM pages p JOIN documents d ON d.id = p.doc_id "
        "WHERE d.status = 'done' ORDER BY p.segment_id, p.row_offset"
    ).fetchall()
    return [PageRecord(*r) for r in rows]


def all_pages(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every stored page (any document status), in segment order."""
    return conn.execute(
        "SELECT id, segment_id, row_offset, n_tokens, centroids FROM pages ORDER BY segment_id, row_offset"
    ).fetchall()


def page_spans(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id, segment_id, row_offset, n_tokens) of every stored page (any schema version)."""
    return conn.execute(
        "SELECT id, segment_id, row_offset, n_tokens FROM pages ORDER BY segment_id, row_offset"
    ).fetchall()


def raw_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """A meta value as stored (for records of older schemas, checked by their reader)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def visible_page_centroids(conn: sqlite3.Connection) -> list[tuple[int, bytes | None]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT p.id, p.centroids FROM pages p JOIN documents d ON d.id = p.doc_id WHERE d.status = 'done'"
        )
    ]


def all_page_centroids(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
    """(page id, centroid ids) of every stored page that has them, any document status: page lists hold
    the pages of documents still being indexed too, so that every page id up to their maximum is on them."""
    return [
        (r[0], r[1]) for r in conn.execute("SELECT id, centroids FROM pages WHERE centroids IS NOT NULL ORDER BY id")
    ]


def visible_pages_after(conn: sqlite3.Connection, page_id: int) -> int:
    """How many visible pages have an id above page_id (a range of the primary key: what the lists lack)."""
    return int(
        conn.execute(
            "SELECT COUNT(*) FROM pages p JOIN documents d ON d.id = p.doc_id WHERE p.id > ? AND d.status = 'done'",
            (page_id,),
        ).fetchone()[0]
    )


def rows_stored(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(SUM(committed_rows), 0) FROM segments").fetchone()[0])


def to_document(row: sqlite3.Row) -> Document:
    return Document(
        id=row["id"],
        path=row["path"],
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        sha256=row["sha256"],
        n_pages=row["n_pages"],
        status=row["status"],
        error=row["error"],
    )


def documents(conn: sqlite3.Connection, status: str | None = None) -> list[Document]:
    q = "SELECT * FROM documents" + (" WHERE status = ?" if status else "") + " ORDER BY path, status"
    return [to_document(r) for r in conn.execute(q, (status,) if status else ())]


def documents_of(conn: sqlite3.Connection, path: str) -> list[Document]:
    return [to_document(r) for r in conn.execute("SELECT * FROM documents WHERE path = ?", (text(path),))]


def page_errors(conn: sqlite3.Connection, doc_id: int | None = None) -> list[tuple[str, int, str, str]]:
    q = (
        "SELECT d.path, e.page_no, e.kind, e.message FROM page_errors e JOIN documents d ON d.id = e.doc_id "
        + ("WHERE d.id = ? " if doc_id is not None else "WHERE d.status = 'done' ")
        + "ORDER BY d.path, e.page_no"
    )
    return [tuple(r) for r in conn.execute(q, (doc_id,) if doc_id is not None else ())]


def stored_page_numbers(conn: sqlite3.Connection, doc_id: int) -> set[int]:
    done = {r[0] for r in conn.execute("SELECT page_no FROM pages WHERE doc_id = ?", (doc_id,))}
    done |= {
        r[0] for r in conn.execute("SELECT page_no FROM page_errors WHERE doc_id = ? AND kind = 'error'", (doc_id,))
    }
    return done


def all_paths(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT path FROM documents")]


def counts(conn: sqlite3.Connection) -> dict[str, Any]:
    """The numbers `colrag status` shows (call inside a snapshot)."""
    by_status = dict(conn.execute("SELECT status, COUNT(*) FROM documents GROUP BY status").fetchall())
    pages, tokens = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(n_tokens), 0) FROM pages p JOIN documents d ON d.id = p.doc_id WHERE "
        "d.status = 'done'"
    ).fetchone()
    stored_tokens = conn.execute("SELECT COALESCE(SUM(n_tokens), 0) FROM pages").fetchone()[0]
    failed = [
        {"path": r["path"], "error": r["error"]}
        for r in conn.execute("SELECT path, error FROM documents WHERE status = 'failed' ORDER BY path")
    ]
    page_failures = conn.execute(
        "SELECT COUNT(*) FROM page_errors e JOIN documents d ON d.id = e.doc_id WHERE d.status = 'done' AND "
        "e.kind = 'error'"
    ).fetchone()[0]
    return {
        "by_status": by_status,
        "pages": int(pages),
        "tokens": int(tokens),
        "stored_tokens": int(stored_tokens),
        "rows": rows_stored(conn),
        "failed": failed,
        "page_failures": int(page_failures),
    }


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    problems = []
    if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
        problems.append("SQLite integrity_check failed")
    if conn.execute("PRAGMA foreign_key_check").fetchall():
        problems.append("catalog rows point at missing documents or segments")
    return problems


def done_documents_seen(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id, path, n_pages, seen = pages stored + pages failed) of every done document."""
    return conn.execute(
        "SELECT d.id, d.path, d.n_pages, "
        "(SELECT COUNT(*) FROM pages p WHERE p.doc_id = d.id) + "
        "(SELECT COUNT(*) FROM page_errors e WHERE e.doc_id = d.id AND e.kind = 'error') AS seen "
        "FROM documents d WHERE d.status = 'done'"
    ).fetchall()
