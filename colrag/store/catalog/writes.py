"""The catalog's write statements, run inside the caller's transaction (colrag.store.writer, the
index writer): documents, pages, page errors, segments, meta.
Reads and the schema are colrag.store.catalog's; every string stored passes colrag.utf8.text.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from ...utf8 import text


def now() -> float:
    return time.time()


def bump_generation(conn: sqlite3.Connection) -> int:
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0


def set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def set_page_centroids(conn: sqlite3.Connection, values: Iterable[tuple[bytes, int]]) -> None:
    conn.executemany("UPDATE pages SET centroids = ? WHERE id = ?", values)


def insert_document(
    conn: sqlite3.Connection,
    path: str,
    size: int | None,
    mtime_ns: int | None,
    sha256: str | None,
    n_pages: int | None,
    status: str,
    error: str | None = None,
) -> int:
    cur = conn.execute(
        "INSERT INTO documents (path, size, mtime_ns, sha256, n_pages, status, error, updated_at) VALUES (?, "
        "?, ?, ?, ?, ?, ?, ?)",
        (text(path), size, mtime_ns, sha256, n_pages, status, None if error is None else text(error), now()),
    )
    return int(cur.lastrowid or 0)


def delete_documents(
    conn: sqlite3.Connection, path: str, *, status: str | None = None, except_id: int | None = None
) -> int:
    q, args = "DELETE FROM documents WHERE path = ?", list[str | int]([text(path)])
    if status is not None:
        q, args = q + " AND status = ?", [*args, status]
    if except_id is not None:
        q, args = q + " AND id != ?", [*args, except_id]
    return int(conn.execute(q, args).rowcount)


def delete_document(conn: sqlite3.Connection, doc_id: int, status: str) -> None:
    conn.execute("DELETE FROM documents WHERE id = ? AND status = ?", (doc_id, status))


def document_path(conn: sqlite3.Connection, doc_id: int) -> str:
    return str(conn.execute("SELECT path FROM documents WHERE id = ?", (doc_id,)).fetchone()[0])


def mark_done(conn: sqlite3.Connection, doc_id: int) -> None:
    conn.execute("UPDATE documents SET status = 'done', error = NULL, updated_at = ? WHERE id = ?", (now(), doc_id))


def touch_document(conn: sqlite3.Connection, doc_id: int, size: int, mtime_ns: int) -> None:
    conn.execute("UPDATE documents SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, doc_id))


def save_segment(conn: sqlite3.Connection, segment_id: int | None, name: str, rows: int) -> int:
    if segment_id is None:
        return int(
            conn.execute("INSERT INTO segments (name, committed_rows) VALUES (?, ?)", (name, rows)).lastrowid or 0
        )
    conn.execute("UPDATE segments SET name = ?, committed_rows = ? WHERE id = ?", (name, rows, segment_id))
    return segment_id


def delete_segment(conn: sqlite3.Connection, segment_id: int) -> None:
    conn.execute("DELETE FROM segments WHERE id = ?", (segment_id,))


def insert_pages(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (doc_id, page_no, width, height, segment_id, row_offset, n_tokens, centroids).

    Page ids only grow, never reused (meta 'next_page_id'; SQLite alone reuses the ids of the
    last rows once deleted): a page list built up to id N knows every page id <= N it holds."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'next_page_id'").fetchone()
    top = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM pages").fetchone()[0]
    first = max(int(row[0]) if row else 0, int(top))
    conn.executemany(
        "INSERT INTO pages (id, doc_id, page_no, width, height, segment_id, row_offset, n_tokens, centroids) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(first + i, *r) for i, r in enumerate(rows)],
    )
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_page_id', ?)", (str(first + len(rows)),))


def delete_pages(conn: sqlite3.Connection, doc_id: int, page_nos: Iterable[int]) -> None:
    conn.executemany("DELETE FROM pages WHERE doc_id = ? AND page_no = ?", [(doc_id, n) for n in page_nos])


def move_pages(conn: sqlite3.Connection, moves: Iterable[tuple[int, int, int]]) -> None:
    """(segment_id, row_offset, page_id): where compaction put each page."""
    conn.executemany("UPDATE pages SET segment_id = ?, row_offset = ? WHERE id = ?", moves)


def insert_page_errors(conn: sqlite3.Connection, doc_id: int, errors: Iterable[tuple[int, str, str]]) -> None:
    conn.executemany(
        "INSERT INTO page_errors (doc_id, page_no, kind, message) VALUES (?, ?, ?, ?)",
        [(doc_id, no, kind, text(message)) for no, kind, message in errors],
    )
