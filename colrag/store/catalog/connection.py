"""The catalog's SQLite connection: every sqlite3 failure becomes one IndexStoreError line naming the file.

Readers open it read-only (URI mode=ro) and never create it; writers open it in WAL mode
with synchronous=FULL. `transaction` and `snapshot` are the two ways the store uses it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ...errors import IndexStoreError

# -- errors: every sqlite3 failure of a catalog becomes one line naming the file ------------


def store_error(exc: sqlite3.Error, file: str | os.PathLike) -> IndexStoreError:
    msg = str(exc) or type(exc).__name__
    if "malformed" in msg or "not a database" in msg or "file is encrypted" in msg:
        return IndexStoreError(
            f"the catalog {file} cannot be read ({msg}): the index is damaged; move its folder aside and run "
            "`colrag index` again"
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
