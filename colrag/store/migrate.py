"""Schema 2 -> 3, in place, by the writer that first opens a schema-2 index: no page is re-embedded.

Schema 2 stored int8 rows (vectors/seg-NNNNNN.i8), each row's centroid code
(seg-NNNNNN.codes) and a two-level codebook (codebook.npy). The upgrade:
  1. re-encodes every segment's rows (decoded as schema 2 did: q / ||q||) into a FAISS SQ8
     segment file seg-NNNNNN-v000001.faiss (same rows, same order: page offsets stay);
  2. keeps the codebook's fine centroids as the FAISS coarse quantizer (coarse-000001.faiss)
     and each page's distinct codes as its centroid ids (no re-assignment);
  3. commits all of it in one catalog transaction (schema 3), then writes the schema-3
     manifest, then deletes schema 2's files.
A crash before 3's transaction leaves the schema-2 index as it was (the new files are
unreferenced, and the next writer starts over); after it, the catalog is schema 3 and the
next writer finishes the manifest and the clean-up.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexStoreError
from ..fsutil import atomic_write_json
from . import catalog as cat
from . import coarse, faiss_io
from .catalog.migrations import pending_v3
from .manifest import MANIFEST_FILE, SCHEMA_VERSION
from .segments import CODEC, SEGMENTS_DIR, new_segment, segment_name, unit_rows

_OLD_SEGMENT = re.compile(r"^seg-(\d{6})\.i8$")
_CHUNK = 1 << 16


def _old_file(folder: Path, name: str) -> Path:
    path = folder / name
    if path.is_symlink() or not path.is_file():
        raise IndexStoreError(
            f"cannot upgrade {folder.parent}: {name} is missing or a link (the schema-2 index is damaged)"
        )
    return path


def upgrade(path: Path, conn: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Upgrade the index at `path` (write.lock held) and return its schema-3 manifest."""
    folder = path / SEGMENTS_DIR
    dim = int(manifest["dim"])
    pages = 0
    if 2 <= cat.check_version(conn) < cat.FAISS_VERSION:
        segs = cat.segments(conn, check_names=False)
        new_names: dict[int, str] = {}
        codes: dict[int, np.ndarray] = {}
        raw = cat.raw_meta(conn, "codebook")
        try:
            book = json.loads(raw) if raw else None
        except ValueError:
            book = {}
        if book is not None and (not isinstance(book, dict) or book.get("file") != "codebook.npy"):
            raise IndexStoreError(f"cannot upgrade {path}: its codebook record is damaged")
        for sid, (name, rows) in segs.items():
            m = _OLD_SEGMENT.match(name)
            if not m:
                raise IndexStoreError(
                    f"cannot upgrade {path}: the catalog names a segment {name!r} colrag 2 did not write"
                )
            file = _old_file(folder, name)
            if file.stat().st_size < rows * dim:
                raise IndexStoreError(
                    f"cannot upgrade {path}: {name} is shorter than the catalog says (the index is damaged)"
                )
            q8 = np.memmap(file, dtype=np.int8, mode="r", shape=(rows, dim)) if rows else np.zeros((0, dim), np.int8)
            seg = new_segment(dim)
            for s in range(0, rows, _CHUNK):
                seg.add(unit_rows(np.asarray(q8[s : s + _CHUNK], dtype=np.float32)))
            new_names[sid] = segment_name(int(m.group(1)), 1)
            faiss_io.write_index(seg, folder, new_names[sid])
            if book:
                code_file = _old_file(folder, name[: -len(".i8")] + ".codes")
                codes[sid] = np.fromfile(code_file, dtype="<u2", count=rows)
        page_sets: list[tuple[bytes, int]] = []
        meta = None
        if book:  # the codebook's fine centroids become the coarse quantizer; each page keeps its codes
            arr = np.load(_old_file(folder, str(book["file"])), allow_pickle=False)
            fine = np.ascontiguousarray(np.asarray(arr, dtype=np.float32)[int(book["coarse"]) :])
            quantizer = faiss_io.faiss_module().IndexFlatIP(dim)
            quantizer.add(fine)
            faiss_io.write_index(quantizer, folder, coarse.COARSE_FILE)
            meta = {"file": coarse.COARSE_FILE, "n_centroids": len(fine), "trained_on": int(book.get("trained_on", 0))}
            for r in cat.page_spans(conn):
                c = codes[r["segment_id"]][r["row_offset"] : r["row_offset"] + r["n_tokens"]]
                page_sets.append((np.unique(c).astype(coarse.CENTROID_DTYPE).tobytes(), int(r["id"])))
        pages = len(cat.page_spans(conn))
        pending_v3.update(segments=new_names, centroids=page_sets, coarse=json.dumps(meta) if meta else None)
        try:
            cat.migrate(conn)  # migration 3 commits the new files' names, in one transaction
        finally:
            pending_v3.clear()
    new = {k: v for k, v in manifest.items() if k not in ("vector_dtype", "vector_encoding", "code_dtype")}
    new.update(schema_version=SCHEMA_VERSION, vector_codec=CODEC)
    atomic_write_json(path / MANIFEST_FILE, new)
    if pages:
        print(
            f"colrag: upgraded index {path} to schema {SCHEMA_VERSION} (FAISS SQ8 vectors): "
            f"{pages} pages converted in place, none re-embedded",
            file=sys.stderr,
        )
    return new
