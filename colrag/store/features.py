"""Page features in the index: each page's vision-tower output, kept so that `ask` on an
indexed page runs neither the renderer nor the vision tower (issue 11).

    features/doc-00000042.feat   the pages of document 42, page after page (page-contiguous):
                                 (n_image_tokens, hidden) rows in the index's encoding
    catalog table page_features  (page_id, doc_id, row_offset, n_rows, grid_t, grid_h, grid_w, crc32),
                                 feature_repairs (doc_id): catalog migration 3 (catalog.py)

One file per document: removing or re-indexing a document deletes its file, so the disk
space comes back at once (the vectors' dead rows wait for a compaction; these are ~20x
larger). Encodings (manifest "page_features" → "encoding"):
    float16      2 bytes per value (1536 x 768 x 2 = 2.36 MB for a full page of Qwen2-VL-2B)
    int8-row     per row: float32 scale (max|x| / 127) then `hidden` int8 values
                 (1536 + 4 bytes per token: 1.18 MB per full page)

Crash safety is the vectors' (vectors.py): a writer appends rows past the document's
committed length (the end of its last recorded page), fsyncs, then the catalog
transaction that records the pages records their features too. Bytes past the committed
length are an interrupted write's remains, truncated by the next writer; a file no
catalog row references is deleted by the next writer. A reader checks each page's size
and crc32 before using it: damaged features are reported and recomputed, never fed to the
decoder. A file found short by a writer loses its missing pages' rows and the document is
marked for repair: the next `colrag index` run recomputes those pages' features.

The manifest's "page_features" = {"vision_hash", "hidden_size", "encoding"} names the
vision tower the features came from; `ask` uses them only with a generator whose
vision_hash is the same (checked when they are used, not only when written).
"""

from __future__ import annotations

import os
import re
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ..vlm.image_features import ImageFeatures

if TYPE_CHECKING:
    from .manifest import RetrieverInfo

FEATURES_DIR = "features"
FLOAT16 = "float16"
INT8_ROW = "int8-row"
DEFAULT_ENCODING = FLOAT16
_FILE_RE = re.compile(r"^doc-(\d{8})\.feat$")


class FeaturesUnavailable(Exception):
    """A page's stored features are missing or damaged (the caller computes them instead)."""


def file_name(doc_id: int) -> str:
    return f"doc-{int(doc_id):08d}.feat"


def file_doc_id(name: str) -> int | None:
    m = _FILE_RE.match(name)
    return int(m.group(1)) if m else None


def manifest_info(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The index manifest's "page_features" entry ({"vision_hash", "hidden_size", "encoding"}), or None."""
    info = manifest.get("page_features")
    if not isinstance(info, dict) or info.get("encoding") not in (FLOAT16, INT8_ROW):
        return None
    if not isinstance(info.get("vision_hash"), str) or not isinstance(info.get("hidden_size"), int):
        return None
    return info


def features_entry(retriever: RetrieverInfo, current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The "page_features" entry a writer with this retriever keeps (current: the manifest's; None: keep none)."""
    if not retriever.vision_hash or retriever.hidden_size <= 0:
        return None  # a retriever that does not name its vision tower: features could never be matched
    if current is not None:
        same = current["vision_hash"] == retriever.vision_hash and current["hidden_size"] == retriever.hidden_size
        return current if same else None
    return {"vision_hash": retriever.vision_hash, "hidden_size": retriever.hidden_size, "encoding": DEFAULT_ENCODING}


def has_table(conn: sqlite3.Connection) -> bool:
    return (
        conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'page_features'").fetchone()
        is not None
    )


# -- encodings ---------------------------------------------------------------------------
def row_bytes(encoding: str, hidden: int) -> int:
    return hidden * 2 if encoding == FLOAT16 else hidden + 4


def encode(x: np.ndarray, encoding: str) -> bytes:
    """(n, hidden) float rows -> bytes in the encoding."""
    x = np.asarray(x, dtype=np.float32)  # (n, hidden)
    if encoding == FLOAT16:
        return np.ascontiguousarray(x, dtype="<f2").tobytes()
    peak = np.abs(x).max(axis=1, keepdims=True)  # (n, 1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype("<f4")  # (n, 1)
    q = np.rint(x / scale).astype(np.int8)  # (n, hidden)
    rows = np.empty((len(x), 4 + x.shape[1]), dtype=np.uint8)  # (n, 4 + hidden)
    rows[:, :4] = scale.view(np.uint8).reshape(len(x), 4)
    rows[:, 4:] = q.view(np.uint8)
    return rows.tobytes()


def decode(buf: bytes, n: int, hidden: int, encoding: str) -> np.ndarray:
    """bytes -> (n, hidden) float32."""
    if encoding == FLOAT16:
        return np.frombuffer(buf, dtype="<f2", count=n * hidden).reshape(n, hidden).astype(np.float32)
    rows = np.frombuffer(buf, dtype=np.uint8, count=n * (hidden + 4)).reshape(n, hidden + 4)
    scale = rows[:, :4].copy().view("<f4")  # (n, 1)
    return rows[:, 4:].view(np.int8).astype(np.float32) * scale


# -- writing -------------------------------------------------------------------------------
@dataclass
class _Placed:
    page_no: int
    row_offset: int
    n_rows: int
    grid: tuple[int, int, int]
    crc32: int


class FeatureWriter:
    """Appends pages' features to their document's file; nothing is visible until `record`'s transaction commits."""

    def __init__(self, root: Path, hidden: int, encoding: str):
        self.root = root
        self.hidden = hidden
        self.encoding = encoding
        self.row_bytes = row_bytes(encoding, hidden)
        self._doc_id: int | None = None
        self._file: BinaryIO | None = None
        self._committed = 0  # rows of the current document recorded in the catalog
        self._pending: list[_Placed] = []

    def _open(self, conn: sqlite3.Connection, doc_id: int) -> None:
        if self._doc_id == doc_id and self._file is not None:
            return
        self.close()
        self._committed = committed_rows(conn, doc_id)
        path = self.root / file_name(doc_id)
        self._file = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 -- kept open across add_pages calls
        self._file.truncate(self._committed * self.row_bytes)  # what an interrupted writer left
        self._doc_id = doc_id

    def append(self, conn: sqlite3.Connection, doc_id: int, page_no: int, feats: ImageFeatures) -> None:
        feats.check(self.hidden)
        self._open(conn, doc_id)
        assert self._file is not None
        offset = self._committed + sum(p.n_rows for p in self._pending)
        data = encode(feats.embeds, self.encoding)
        self._file.seek(offset * self.row_bytes)
        self._file.write(data)
        t, h, w = (int(v) for v in np.asarray(feats.grid_thw).reshape(3))
        grid = (t, h, w)
        self._pending.append(_Placed(page_no, offset, feats.n_tokens, grid, zlib.crc32(data)))

    def sync(self) -> None:
        if self._file is not None and self._pending:
            self._file.flush()
            os.fsync(self._file.fileno())

    def record(self, conn: sqlite3.Connection, doc_id: int) -> None:
        """Inside the caller's transaction, after its pages rows: the pending features' rows."""
        if not self._pending:
            return
        ids = dict(conn.execute("SELECT page_no, id FROM pages WHERE doc_id = ?", (doc_id,)).fetchall())
        conn.executemany(
            "INSERT INTO page_features (page_id, doc_id, row_offset, n_rows, grid_t, grid_h, grid_w, crc32) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(ids[p.page_no], doc_id, p.row_offset, p.n_rows, *p.grid, p.crc32) for p in self._pending],
        )

    def committed(self) -> None:
        self._committed += sum(p.n_rows for p in self._pending)
        self._pending = []

    def rollback(self) -> None:
        self._pending = []
        if self._file is not None:
            self._file.truncate(self._committed * self.row_bytes)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._doc_id, self._pending = None, None, []


def committed_rows(conn: sqlite3.Connection, doc_id: int) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(row_offset + n_rows), 0) FROM page_features WHERE doc_id = ?", (doc_id,)
    ).fetchone()
    return int(row[0])


# -- housekeeping (writer) -------------------------------------------------------------------
def sweep(conn: sqlite3.Connection, root: Path) -> None:
    """Delete the files of documents the catalog no longer has (removed, replaced, failed)."""
    if not root.is_dir():
        return
    docs = {r[0] for r in conn.execute("SELECT id FROM documents")}
    for file in root.iterdir():
        doc_id = file_doc_id(file.name)
        if doc_id is not None and doc_id not in docs:
            file.unlink(missing_ok=True)


def repair(conn: sqlite3.Connection, root: Path, hidden: int, encoding: str, transaction) -> list[str]:
    """At writer open: drop crash leftovers (uncommitted tails, unreferenced files) and forget the
    features of pages whose bytes are missing (the document is marked for repair). Returns notes."""
    notes: list[str] = []
    root.mkdir(exist_ok=True)
    size_of = row_bytes(encoding, hidden)
    referenced = {
        r[0]: int(r[1])
        for r in conn.execute("SELECT doc_id, MAX(row_offset + n_rows) FROM page_features GROUP BY doc_id")
    }
    docs = {r[0] for r in conn.execute("SELECT id FROM documents")}
    damaged: list[int] = []
    for file in root.iterdir():
        doc_id = file_doc_id(file.name)
        if doc_id is None:
            continue  # not colrag's: left alone
        if doc_id not in docs:
            file.unlink(missing_ok=True)
            continue
        want = referenced.get(doc_id, 0) * size_of
        size = file.stat().st_size
        if size > want:
            with open(file, "r+b") as f:
                f.truncate(want)
                os.fsync(f.fileno())
        elif size < want:
            damaged.append(doc_id)
    damaged += [d for d in referenced if d in docs and not (root / file_name(d)).is_file()]
    if damaged:
        with transaction(conn) as c:
            for doc_id in damaged:
                size = (root / file_name(doc_id)).stat().st_size if (root / file_name(doc_id)).is_file() else 0
                # keep the pages whose bytes are all there; forget the others
                c.execute(
                    "DELETE FROM page_features WHERE doc_id = ? AND (row_offset + n_rows) * ? > ?",
                    (doc_id, size_of, size),
                )
                c.execute("INSERT OR IGNORE INTO feature_repairs (doc_id) VALUES (?)", (doc_id,))
                notes.append(
                    f"{FEATURES_DIR}/{file_name(doc_id)} is short: its missing pages' features will be recomputed"
                )
    return notes


def docs_to_repair(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT doc_id FROM feature_repairs ORDER BY doc_id")]


def pages_without_features(conn: sqlite3.Connection, doc_id: int) -> list[tuple[int, int]]:
    """(page_id, page_no) of a document's stored pages that have no features."""
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT p.id, p.page_no FROM pages p LEFT JOIN page_features f ON f.page_id = p.id "
            "WHERE p.doc_id = ? AND f.page_id IS NULL ORDER BY p.page_no",
            (doc_id,),
        )
    ]


# -- reading -------------------------------------------------------------------------------
def read_page(conn: sqlite3.Connection, root: Path, page_id: int, info: dict[str, Any]) -> ImageFeatures:
    """A page's features, checked (size, crc32, shape, finite); FeaturesUnavailable otherwise."""
    row = (
        conn.execute(
            "SELECT doc_id, row_offset, n_rows, grid_t, grid_h, grid_w, crc32 FROM page_features WHERE page_id = ?",
            (page_id,),
        ).fetchone()
        if has_table(conn)
        else None
    )
    if row is None:
        raise FeaturesUnavailable("the page has no stored features")
    doc_id, offset, n, t, h, w, crc = (int(v) for v in row)
    hidden, encoding = int(info["hidden_size"]), str(info["encoding"])
    size = row_bytes(encoding, hidden)
    path = root / file_name(doc_id)
    try:
        with open(path, "rb") as f:
            data = os.pread(f.fileno(), n * size, offset * size)
    except OSError as exc:
        raise FeaturesUnavailable(f"{FEATURES_DIR}/{path.name} cannot be read: {exc.strerror or exc}") from None
    if len(data) != n * size:
        raise FeaturesUnavailable(f"{FEATURES_DIR}/{path.name} is truncated")
    if zlib.crc32(data) != crc:
        raise FeaturesUnavailable(f"{FEATURES_DIR}/{path.name} is corrupt (checksum mismatch)")
    feats = ImageFeatures(decode(data, n, hidden, encoding), np.array([t, h, w], dtype=np.int64), info["vision_hash"])
    try:
        feats.check(hidden)
    except ValueError as exc:
        raise FeaturesUnavailable(f"{FEATURES_DIR}/{path.name}: {exc}") from None
    return feats


def read_hit(index, snap, path: str, page_no: int) -> ImageFeatures:
    """The stored features of a search hit (file, 1-based page) in an open Index's snapshot."""
    info = manifest_info(index.manifest)
    if info is None:
        raise FeaturesUnavailable("the index stores no page features")
    record = next((p for p in snap.pages if p.path == path and p.page_no == page_no), None)
    if record is None:
        raise FeaturesUnavailable(f"{path} page {page_no} is no longer in the index")
    return read_page(index.conn, index.path / FEATURES_DIR, record.id, info)


def clear_repair(conn: sqlite3.Connection, doc_id: int) -> None:
    """The document's features are whole again (inside the caller's transaction)."""
    conn.execute("DELETE FROM feature_repairs WHERE doc_id = ?", (doc_id,))
