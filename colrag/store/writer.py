"""Writing an index: pages in, documents made visible or removed, page lists refreshed, segments compacted.

How a commit stays crash-safe (docs/INDEX_FORMAT.md):
  1. the new rows are added to the active segment in memory and the segment's next FAISS
     file version is written (temp + fsync + rename; colrag.store.faiss_io);
  2. one SQLite transaction (synchronous=FULL) inserts the pages (with their centroid ids)
     and points the segment at the new version and row count;
  3. the version it replaced is deleted.
A crash before 2 leaves an unreferenced version (deleted by `repair` when the next writer
opens); after 2, at most the replaced version (deleted too). A failed transaction deletes
the new version at once. `repair` deletes only names colrag writes (faiss_io.FAISS_NAME,
its temp files, and schema 2's files once upgraded); anything else is left and reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import catalog as cat
from . import coarse, faiss_io, lists
from .catalog import transaction
from .folder import is_own_file, remove_leftovers
from .segments import SEGMENT_MAX_ROWS, SegmentWriter, codes_view, new_segment, parse_name, unit_rows

if TYPE_CHECKING:
    from .index import Index

STALE_LISTS_PAGES = 2000  # pages the saved lists may lack before the writer rebuilds them
STALE_LISTS_SHARE = 0.05  # ... or this share of the visible pages, whichever is larger
COMPACT_DEAD_SHARE = 0.25  # compact automatically when dead rows pass this share of the stored rows


class Writer:
    def __init__(self, index: Index):
        self.ix = index
        self.segment: SegmentWriter | None = None
        self.segment_id: int | None = None

    @property
    def conn(self) -> Any:
        return self.ix.conn

    # -- crash leftovers -----------------------------------------------------------
    def repair(self) -> list[str]:
        """Delete colrag's own files that no committed catalog row references; returns foreign names (kept)."""
        referenced = {name for name, _ in cat.segments(self.conn).values()}
        for key in ("coarse", "lists"):
            meta = cat.get_meta(self.conn, key)
            if meta:
                referenced.add(meta["file"])
        remove_leftovers(self.ix.path, referenced)
        return sorted(f.name for f in self.ix.vectors_dir.iterdir() if not is_own_file(f.name))

    # -- the active segment ----------------------------------------------------------
    def _active(self) -> SegmentWriter:
        if self.segment is not None and not self.segment.full:
            return self.segment
        last = cat.last_segment(self.conn)
        if last is not None and last[2] < SEGMENT_MAX_ROWS:
            number, version = parse_name(last[1]) or (0, 0)
            self.segment = SegmentWriter(self.ix.vectors_dir, self.ix.dim, number, version, last[1], last[2])
            self.segment_id = last[0]
        else:
            number = (parse_name(last[1]) or (0, 0))[0] + 1 if last is not None else 1
            self.segment = SegmentWriter(self.ix.vectors_dir, self.ix.dim, number, 0, None, 0)
            self.segment_id = None  # inserted into the catalog with its first commit
        return self.segment

    # -- documents -------------------------------------------------------------------
    def begin_document(self, path: str, size: int, mtime_ns: int, sha256: str, n_pages: int) -> int:
        with transaction(self.conn) as c:
            cat.delete_documents(c, path, status="indexing")
            return cat.insert_document(c, path, size, mtime_ns, sha256, n_pages, "indexing")

    def add_pages(
        self,
        doc_id: int,
        pages: list[tuple[int, int, int, np.ndarray]],
        errors: list[tuple[int, str, str]],
        features: Any = None,
    ) -> None:
        self._store(doc_id, pages, errors, replace=False, features=features)

    def put_pages(self, path: str, pages: list[tuple[int, int, int, np.ndarray]]) -> None:
        """Pages of a path's visible document (created if missing), replacing pages of the same numbers (Python API)."""
        current = [d for d in cat.documents_of(self.conn, path) if d.status == "done"]
        if current:
            doc_id = current[0].id
        else:
            with transaction(self.conn) as c:
                cat.delete_documents(c, path)
                doc_id = cat.insert_document(c, path, None, None, None, None, "done")
        self._store(doc_id, pages, [], replace=True)

    def _store(
        self,
        doc_id: int,
        pages: list[tuple[int, int, int, np.ndarray]],
        errors: list[tuple[int, str, str]],
        *,
        replace: bool,
        features: Any = None,
    ) -> None:
        for page_no, _, _, vecs in pages:
            if np.ndim(vecs) != 2 or np.shape(vecs)[1] != self.ix.dim or len(vecs) == 0:
                raise ValueError(
                    f"page {page_no}: vectors of shape {np.shape(vecs)}, expected (n, {self.ix.dim}) with n >= 1"
                )
            if not np.all(np.isfinite(vecs)):
                raise ValueError(f"page {page_no}: non-finite vectors")
        rows = [unit_rows(v) for _, _, _, v in pages]
        seg = self._active() if pages else None
        feats = self.ix._features if features is not None and self.ix._features is not None else None
        trained = None  # (quantizer, meta, centroid sets of the pages stored before) when this commit trains them
        try:
            quantizer = self._quantizer()
            if quantizer is None and pages and cat.rows_stored(self.conn) + sum(map(len, rows)) >= coarse.MIN_ROWS:
                trained = self._train_coarse(rows)
                quantizer = trained[0]
            sets = coarse.page_centroids(quantizer, rows) if quantizer is not None else [None] * len(rows)
            placed = []
            if seg is not None:
                for (page_no, width, height, _), r, s in zip(pages, rows, sets, strict=True):
                    placed.append((doc_id, page_no, width, height, seg.append(r), len(r), s))
                name = seg.write()
            if (
                feats is not None
            ):  # page features (colrag.store.features): their file first, their rows in the transaction
                for (page_no, *_), page_feats in zip(pages, features, strict=True):
                    if page_feats is not None:
                        feats.append(self.conn, doc_id, page_no, page_feats)
                feats.sync()
            with transaction(self.conn) as c:
                if trained is not None:
                    cat.set_meta(c, "coarse", trained[1])
                    cat.set_page_centroids(c, trained[2])
                if seg is not None:
                    seg_id = cat.save_segment(c, self.segment_id, name, seg.rows)
                    if replace:
                        cat.delete_pages(c, doc_id, [p[1] for p in placed])
                    cat.insert_pages(c, [(d, no, w, h, seg_id, off, n, s) for d, no, w, h, off, n, s in placed])
                cat.insert_page_errors(c, doc_id, errors)
                if feats is not None:
                    feats.record(c, doc_id)
                if replace:
                    cat.bump_generation(c)
        except BaseException:
            if feats is not None:
                feats.rollback()
            if seg is not None:
                seg.rollback()
            if trained is not None:  # the centroids never committed
                (self.ix.vectors_dir / trained[1]["file"]).unlink(missing_ok=True)
                self.ix._coarse = None
            raise
        if feats is not None:
            feats.committed()
        if seg is not None:
            self.segment_id = seg_id
            old = seg.committed()
            if old is not None:
                (self.ix.vectors_dir / old).unlink(missing_ok=True)

    def _quantizer(self) -> Any:
        meta = cat.get_meta(self.conn, "coarse")
        if meta is None:
            return None
        if self.ix._coarse is None:
            self.ix._coarse = faiss_io.read_index(self.ix.vectors_dir, meta["file"], mmap=None)
        return self.ix._coarse

    def _train_coarse(self, new_rows: list[np.ndarray]) -> tuple[Any, dict, list[tuple[bytes, int]]]:
        """Train the centroids on a sample of the stored rows + the batch being added, write them (files
        only: the caller's transaction commits them) and compute every stored page's centroid ids.

        Memory: the sample is gathered into one float32 array, and the stored pages are decoded and
        assigned a block at a time (~coarse.ASSIGN_ROWS rows), never all at once (issue 15 item 17)."""
        from .segments import decode

        stored = cat.all_pages(self.conn)
        segs = cat.segments(self.conn)
        total = sum(r["n_tokens"] for r in stored) + sum(map(len, new_rows))
        rng = np.random.default_rng(0)
        keep = min(1.0, coarse.MAX_CENTROIDS * coarse.POINTS_PER_CENTROID / max(total, 1))
        codes = {sid: self.ix.reader.rows(name, rows) for sid, (name, rows) in segs.items()}
        page_rows = [codes[r["segment_id"]][r["row_offset"] : r["row_offset"] + r["n_tokens"]] for r in stored]
        masks = [rng.random(len(p)) < keep for p in [*page_rows, *new_rows]]  # (rows,) bool each
        sample = np.empty((sum(int(m.sum()) for m in masks), self.ix.dim), dtype=np.float32)
        at = 0
        for part, mask in zip([*page_rows, *new_rows], masks, strict=True):
            chosen = part[mask]
            sample[at : at + len(chosen)] = decode(chosen) if chosen.dtype == np.uint8 else chosen
            at += len(chosen)
        quantizer = coarse.train(sample)
        del sample
        faiss_io.write_index(quantizer, self.ix.vectors_dir, coarse.COARSE_FILE)
        self.ix._coarse = quantizer
        sets: list[bytes] = []
        block: list[np.ndarray] = []
        for i, p in enumerate(page_rows):
            block.append(p)
            if sum(map(len, block)) >= coarse.ASSIGN_ROWS or i == len(page_rows) - 1:
                sets += coarse.page_centroids(quantizer, [decode(b) for b in block])
                block = []
        meta = {"file": coarse.COARSE_FILE, "n_centroids": int(quantizer.ntotal), "trained_on": int(total)}
        return quantizer, meta, [(s, int(r["id"])) for s, r in zip(sets, stored, strict=True)]

    def finish_document(self, doc_id: int) -> None:
        with transaction(self.conn) as c:
            cat.delete_documents(c, cat.document_path(c, doc_id), except_id=doc_id)
            cat.mark_done(c, doc_id)
            cat.bump_generation(c)

    def record_failure(self, path: str, size: int | None, mtime_ns: int | None, sha256: str | None, error: str) -> None:
        with transaction(self.conn) as c:
            cat.delete_documents(c, path)
            cat.insert_document(c, path, size, mtime_ns, sha256, None, "failed", error)
            cat.bump_generation(c)

    def discard_in_progress(self, doc_id: int) -> None:
        with transaction(self.conn) as c:
            cat.delete_document(c, doc_id, "indexing")

    def touch_document(self, doc_id: int, size: int, mtime_ns: int) -> None:
        with transaction(self.conn) as c:
            cat.touch_document(c, doc_id, size, mtime_ns)

    def remove_documents(self, paths: list[str]) -> int:
        with transaction(self.conn) as c:
            known = sum(cat.delete_documents(c, p) > 0 for p in paths)
            if known:
                cat.bump_generation(c)
        return known

    # -- page lists and compaction ---------------------------------------------------
    def refresh_lists(self, *, force: bool = False) -> lists.PageLists:
        """Rebuild and save the page lists of the visible pages (when `force` or when they lag too far)."""
        snap = self.ix.snapshot()
        current = self.ix.page_lists(snap)
        if current is not None and current.generation == snap.generation:
            return current
        if current is not None and not force:
            lacking = sum(p.id > current.max_page_id for p in snap.pages)
            if lacking <= max(STALE_LISTS_PAGES, STALE_LISTS_SHARE * len(snap.pages)):
                return current
        sets = dict(cat.all_page_centroids(self.conn))
        ids = np.fromiter(sets, dtype=np.int64, count=len(sets))
        ivf = lists.build(int(snap.coarse["n_centroids"]), ids, [coarse.unpack(sets[int(i)]) for i in ids])  # type: ignore[index]
        top = int(ids.max()) if len(ids) else 0
        name = lists.lists_name(snap.generation)
        faiss_io.write_index(ivf, self.ix.vectors_dir, name)
        old = cat.get_meta(self.conn, "lists")
        with transaction(self.conn) as c:
            cat.set_meta(c, "lists", {"file": name, "generation": snap.generation, "max_page_id": top})
        if old and old["file"] != name:
            (self.ix.vectors_dir / faiss_io.check_name(old["file"])).unlink(missing_ok=True)
        self.ix._lists = None
        return lists.PageLists(ivf, snap.generation, top)

    def maintain(self) -> None:
        """End of a run of writes: compact past COMPACT_DEAD_SHARE dead rows; lists refreshed when they lag.

        Adding a page to a large index stays O(page): the checks here are SQL aggregates (no
        snapshot of every page is read unless the lists are rebuilt)."""
        counts = cat.counts(self.conn)
        if counts["rows"] and (counts["rows"] - counts["stored_tokens"]) > COMPACT_DEAD_SHARE * counts["rows"]:
            self.compact()
            counts = cat.counts(self.conn)
        if cat.get_meta(self.conn, "coarse") is not None:
            from ..search import EXACT_ALL_PAGES

            if counts["pages"] > EXACT_ALL_PAGES and self._lists_lag(counts["pages"]):
                self.refresh_lists(force=True)

    def _lists_lag(self, visible: int) -> bool:
        """The saved page lists are missing, unreadable, or lack more pages than STALE_LISTS_* allow."""
        meta = cat.get_meta(self.conn, "lists")
        if meta is None or not (self.ix.vectors_dir / meta["file"]).is_file():
            return True
        if int(meta["generation"]) == cat.generation(self.conn):
            return False
        lacking = cat.visible_pages_after(self.conn, int(meta["max_page_id"]))
        return lacking > max(STALE_LISTS_PAGES, STALE_LISTS_SHARE * visible)

    def compact(self) -> dict[str, int]:
        """Rewrite every segment holding rows no page references (removed or replaced pages)."""
        stored = cat.all_pages(self.conn)
        segs = cat.segments(self.conn)
        before = sum(rows for _, rows in segs.values()) * self.ix.dim
        by_seg: dict[int, list[Any]] = {sid: [] for sid in segs}
        for r in stored:
            by_seg[r["segment_id"]].append(r)
        new_files: dict[int, tuple[str, int]] = {}
        moves: list[tuple[int, int, int]] = []
        empty = [sid for sid, pages in by_seg.items() if not pages]
        try:
            for sid, pages in by_seg.items():
                name, rows = segs[sid]
                used = sum(p["n_tokens"] for p in pages)
                if not pages or used == rows:
                    continue
                codes = self.ix.reader.rows(name, rows)
                fresh = new_segment(self.ix.dim)
                offset = 0
                for p in pages:
                    fresh.add_sa_codes(np.ascontiguousarray(codes[p["row_offset"] : p["row_offset"] + p["n_tokens"]]))
                    moves.append((sid, offset, int(p["id"])))
                    offset += p["n_tokens"]
                number, version = parse_name(name) or (0, 0)
                new_name = f"seg-{number:06d}-v{version + 1:06d}.faiss"
                faiss_io.write_index(fresh, self.ix.vectors_dir, new_name)
                new_files[sid] = (new_name, offset)
            with transaction(self.conn) as c:
                for sid, (name, rows) in new_files.items():
                    cat.save_segment(c, sid, name, rows)
                cat.move_pages(c, moves)
                for sid in empty:
                    cat.delete_segment(c, sid)
                cat.bump_generation(c)
        except BaseException:
            for name, _ in new_files.values():
                (self.ix.vectors_dir / name).unlink(missing_ok=True)
            raise
        for sid in [*new_files, *empty]:
            (self.ix.vectors_dir / faiss_io.check_name(segs[sid][0])).unlink(missing_ok=True)
        self.segment, self.segment_id = None, None  # reopened from the catalog on the next write
        after = sum(rows for _, rows in cat.segments(self.conn).values()) * self.ix.dim
        return {"vector_bytes_before": before, "vector_bytes_after": after}


__all__ = ["Writer", "codes_view"]
