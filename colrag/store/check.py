"""`colrag status` numbers and the integrity check of an index (`colrag status --check`), the
page features' included (their format: colrag.store.features)."""

from __future__ import annotations

import os
import sqlite3
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IndexStoreError
from . import catalog as cat
from . import coarse, faiss_io
from . import features as pf

if TYPE_CHECKING:
    from .index import Index


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def index_stats(ix: Index) -> dict[str, Any]:
    with cat.snapshot(ix.conn):
        counts = cat.counts(ix.conn)
        gen = cat.generation(ix.conn)
        meta = cat.get_meta(ix.conn, "coarse")
    row_bytes = ix.dim  # SQ8: one byte per dimension
    return {
        "index": str(ix.path),
        "retriever": ix.manifest.get("retriever") or {},
        "generation": gen,
        "documents": int(counts["by_status"].get("done", 0)),
        "failed_documents": len(counts["failed"]),
        "documents_in_progress": int(counts["by_status"].get("indexing", 0)),
        "pages": counts["pages"],
        "failed_pages": counts["page_failures"],
        "tokens": counts["tokens"],
        "bytes_on_disk": _disk_usage(ix.path),
        "vector_bytes": counts["rows"] * row_bytes,
        "dead_vector_bytes": (counts["rows"] - counts["stored_tokens"]) * row_bytes,
        "centroids": int(meta["n_centroids"]) if meta else 0,
        **features_stats(ix.conn, ix.path / pf.FEATURES_DIR, pf.manifest_info(ix.manifest)),
        "failed": counts["failed"],
    }


def check_index(ix: Index, *, vectors: bool = True) -> CheckReport:
    report = CheckReport(problems=cat.integrity_problems(ix.conn))
    with cat.snapshot(ix.conn):
        segments = cat.segments(ix.conn)
        pages = cat.all_pages(ix.conn)
        docs = cat.done_documents_seen(ix.conn)
        meta = cat.get_meta(ix.conn, "coarse")
        lists_meta = cat.get_meta(ix.conn, "lists")
    known = set()
    for name, rows in segments.values():
        try:
            known.add(faiss_io.check_name(name))
            n = len(ix.reader.rows(name, rows))
            if n > rows:
                report.notes.append(f"segment {name} holds {n - rows} rows past the committed ones (ignored)")
        except IndexStoreError as exc:
            report.problems.append(str(exc))
    for key, entry in (("coarse centroids", meta), ("page lists", lists_meta)):
        if entry:
            known.add(entry["file"])
            if not (ix.vectors_dir / entry["file"]).is_file():
                report.problems.append(f"the {key} file {entry['file']} is missing")
    for file in ix.vectors_dir.iterdir() if ix.vectors_dir.is_dir() else ():
        if file.name not in known:
            report.notes.append(f"unreferenced file {ix.vectors_dir.name}/{file.name} (ignored)")
    last_end: dict[int, int] = {}
    n_centroids = int(meta["n_centroids"]) if meta else 0
    for p in pages:
        sid = p["segment_id"]
        if sid not in segments:
            report.problems.append(f"page {p['id']} points at unknown segment {sid}")
            continue
        start, n = p["row_offset"], p["n_tokens"]
        if n <= 0 or start < 0 or start + n > segments[sid][1]:
            report.problems.append(
                f"page {p['id']} rows [{start}, {start + n}) are outside segment {segments[sid][0]}'s committed rows"
            )
        if start < last_end.get(sid, 0):
            report.problems.append(f"page {p['id']} overlaps another page in segment {segments[sid][0]}")
        last_end[sid] = max(last_end.get(sid, 0), start + n)
        if meta and (p["centroids"] is None or not len(p["centroids"])):
            report.problems.append(f"page {p['id']} has no centroid ids although the index has centroids")
        elif meta and int(coarse.unpack(p["centroids"]).max()) >= n_centroids:
            report.problems.append(f"page {p['id']} names a centroid beyond the {n_centroids} trained")
    for d in docs:
        if d["n_pages"] is not None and d["seen"] != d["n_pages"]:
            report.problems.append(f"{d['path']}: {d['seen']} of its {d['n_pages']} pages are recorded")
    if vectors and not report.problems:
        for name, rows in segments.values():
            codes = ix.reader.rows(name, rows)
            for s in range(0, rows, 1 << 16):
                block = np.asarray(codes[s : s + (1 << 16)], dtype=np.float32) * (2.0 / 255.0) - (1.0 - 1.0 / 255.0)
                norms = np.linalg.norm(block, axis=1)
                if np.any(np.abs(norms - 1.0) > 0.05):  # stored rows are unit vectors, to SQ8 precision
                    bad = s + int(np.argmax(np.abs(norms - 1.0) > 0.05))
                    report.problems.append(f"segment {name} row {bad} is not a unit vector (norm {norms[bad - s]:.3f})")
                    break
    problems, notes = check_features(ix.conn, ix.path / pf.FEATURES_DIR, pf.manifest_info(ix.manifest), deep=vectors)
    report.problems += problems
    report.notes += notes
    return report


def _disk_usage(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except FileNotFoundError:  # a writer replaced or removed it meanwhile
            pass
    return total


# -- page features: status and check ------------------------------------------------------------
def features_stats(conn: sqlite3.Connection, root: Path, info: dict[str, Any] | None) -> dict[str, Any]:
    if not pf.has_table(conn):
        return {"pages_with_features": 0, "feature_bytes": 0, "feature_bytes_per_page": 0, "features": info}
    (n_pages,) = conn.execute(
        "SELECT COUNT(*) FROM page_features f JOIN documents d ON d.id = f.doc_id WHERE d.status = 'done'"
    ).fetchone()
    on_disk = (
        sum(f.stat().st_size for f in root.iterdir() if pf.file_doc_id(f.name) is not None) if root.is_dir() else 0
    )
    return {
        "pages_with_features": int(n_pages),
        "feature_bytes": int(on_disk),
        "feature_bytes_per_page": int(on_disk // n_pages) if n_pages else 0,
        "features": info,
    }


def check_features(
    conn: sqlite3.Connection, root: Path, info: dict[str, Any] | None, deep: bool
) -> tuple[list[str], list[str]]:
    """(problems, notes): every recorded page within its file; with `deep`, every checksum."""
    problems: list[str] = []
    notes: list[str] = []
    if not pf.has_table(conn):
        return problems, notes
    rows = conn.execute(
        "SELECT page_id, doc_id, row_offset, n_rows, grid_t, grid_h, grid_w, crc32 FROM page_features ORDER BY "
        "doc_id, row_offset"
    ).fetchall()
    if rows and info is None:
        problems.append("the catalog records page features but the manifest names no vision tower for them")
        return problems, notes
    if info is None:
        return problems, notes
    size = pf.row_bytes(str(info["encoding"]), int(info["hidden_size"]))
    bad_files: set[str] = set()
    handles: dict[int, Any] = {}
    try:
        for page_id, doc_id, offset, n, t, h, w, crc in rows:
            path = root / pf.file_name(doc_id)
            rel = f"{pf.FEATURES_DIR}/{path.name}"
            if rel in bad_files:
                continue
            if n != t * h * w // 4:
                problems.append(f"{rel}: page {page_id} has {n} rows for grid {[t, h, w]}")
            if not path.is_file():
                problems.append(f"{rel} is missing (pages of document {doc_id} will be recomputed by `colrag ask`)")
                bad_files.add(rel)
                continue
            if (offset + n) * size > path.stat().st_size:
                problems.append(
                    f"{rel} is truncated ({path.stat().st_size} bytes, page {page_id} needs {(offset + n) * size})"
                )
                bad_files.add(rel)
                continue
            if deep:
                if doc_id not in handles:
                    handles[doc_id] = open(path, "rb")  # noqa: SIM115 -- one per document, closed below
                f = handles[doc_id]
                if zlib.crc32(os.pread(f.fileno(), n * size, offset * size)) != crc:
                    problems.append(f"{rel} is corrupt: page {page_id}'s features do not match their checksum")
                    bad_files.add(rel)
    finally:
        for f in handles.values():
            f.close()
    if root.is_dir():
        known = {pf.file_name(r[1]) for r in rows}
        for file in root.iterdir():
            if file.name not in known and pf.file_doc_id(file.name) is None:
                notes.append(f"unreferenced file {pf.FEATURES_DIR}/{file.name} (ignored)")
    return problems, notes
