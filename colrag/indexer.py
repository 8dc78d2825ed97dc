"""The index pipeline: find PDFs, skip unchanged ones, render, embed, store.

    with Index.open_writer(path, RetrieverInfo.of(retriever)) as index:
        report = Indexer(index, retriever).run(["docs/"])

Incremental: a file whose size and mtime match the catalog is skipped without being
read; otherwise its sha256 decides (same content: skipped, new size/mtime recorded).
Files that disappeared from the given folders are dropped, but only when `lstat` says the
file (or a folder above it) is gone and the folder above that was listed in this run: a
folder that cannot be read, or is empty (an unmounted share), keeps its documents. Pages are committed a few
at a time into an 'indexing' version of the document, invisible to search until the
last page commits together with status 'done'; an interrupted run resumes at the
first page not committed. Failures (whole files, single pages) are collected in the
report (colrag.index_report) and never stop the run; a storage error while recording a file
is that file's failure; only a bug (an error that no bad input raises) ends the run.

Rendering happens in one child process per run (colrag.render_worker), under a time limit
per page (`render_timeout`, default 120 s): a page over it is killed and recorded as failed,
and Ctrl-C stops the run at once with every committed page kept. Embedding stays here.

Page features: when the index keeps them (Index.keeps_features), each page's vision-tower
output comes from the same pass that embeds it (Retriever.embed_pages) and is committed
with its vectors; pages whose stored features a writer found damaged get them recomputed
(render + vision tower only) at the start of the run.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexStoreError, InputError
from .index_report import Failure, IndexReport, NullProgress
from .render import PdfError, PdfWalk, RenderOptions, walk_pdfs
from .render_worker import DEFAULT_RENDER_TIMEOUT, RenderWorker
from .store.index import Index
from .utf8 import text
from .vlm.bundle import sha256_file
from .vlm.image_features import ImageFeatures


@dataclass
class _Job:
    path: Path
    size: int
    mtime_ns: int
    sha256: str
    n_pages: int
    resume_id: int | None  # an interrupted 'indexing' version of the same content
    done_pages: set[int]


def _embed_errors() -> tuple[type[BaseException], ...]:
    """What an image the retriever cannot use raises: our own InputError / ValueError checks and
    onnxruntime's run failures. Anything else (a bug) propagates."""
    errors: tuple[type[BaseException], ...] = (InputError, ValueError)
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return errors
    return (*errors, ort_state.Fail, ort_state.RuntimeException, ort_state.InvalidArgument)


# A failure to record one file in the index (the catalog, a vector or features file): that file
# fails, the run goes on (the next run retries it).
STORAGE_ERRORS = (IndexStoreError, sqlite3.Error, OSError)


class Indexer:
    def __init__(
        self,
        index: Index,
        retriever,
        *,
        password: str | None = None,
        progress=None,
        commit_pages: int = 4,
        retry_failed: bool = False,
        render_timeout: float = DEFAULT_RENDER_TIMEOUT,
        render_command: list[str] | None = None,
        pages_source: Any = None,
    ):
        """pages_source: render and embed pages elsewhere (colrag.ray_pages.RayPages: a Ray cluster);
        its run(path, page_numbers, features=...) yields outcomes in page order, which are stored
        here, through this one writer, exactly as pages embedded in this process."""
        self.index = index
        self.pages_source = pages_source
        self.retriever = retriever
        self.password = password
        self.progress = progress or NullProgress()
        self.commit_pages = max(1, commit_pages)
        self.retry_failed = retry_failed  # try files and pages that failed before, though unchanged
        self.render = index.render if index.render else RenderOptions()
        self.render_timeout = render_timeout  # seconds a page may take to render (in the render child)
        self.render_command = render_command  # the render child's command line (tests use a slow one)
        self._worker: RenderWorker | None = None

    # -- the run -------------------------------------------------------------------
    def run(self, paths: Sequence[str | os.PathLike]) -> IndexReport:
        t0 = time.perf_counter()
        report = IndexReport()
        walk = walk_pdfs(paths)
        files = walk.files
        report.files = len(files)
        report.unreadable_folders = walk.errors
        report.removed_files, report.kept_files = self._drop_vanished(paths, walk)
        with RenderWorker(self.render_timeout, self.render_command, on_wait=self._waiting) as worker:
            self._worker = worker
            try:
                self._index_files(files, report)
            finally:
                self._worker = None
        self.index.refresh()  # page lists refreshed when they lag, dead rows compacted past a threshold
        report.seconds = time.perf_counter() - t0
        return report

    def _index_files(self, files: list[Path], report: IndexReport) -> None:
        jobs = self._plan(files, report)
        self._repair_features(report)
        self.progress.start(sum(j.n_pages - len(j.done_pages) for j in jobs), len(jobs))
        try:
            for job in jobs:
                try:
                    self._index_file(job, report)
                except STORAGE_ERRORS as exc:  # the catalog or a vector file could not take this file
                    report.failures.append(Failure(str(job.path), None, f"cannot record it in the index: {exc}"))
        finally:
            self.progress.finish()

    def _waiting(self, what: str, seconds: float) -> None:
        note = getattr(self.progress, "note", None)
        if note is not None and seconds >= 10:
            note(f"still rendering {what} after {seconds:.0f} s (limit {self.render_timeout:g} s)")

    def _drop_vanished(self, paths, walk: PdfWalk) -> tuple[int, int]:
        """Forget catalogued files of the given folders that are gone; returns (removed, kept).

        A walk error is never a deletion: a file missing from the walk is dropped only when it
        is certainly gone (`_vanished`); the others are kept and counted."""
        present = {text(str(f)) for f in walk.files}  # as the catalog stores them
        missing: set[str] = set()
        for raw in paths:
            folder = Path(raw).expanduser()
            if folder.is_dir():
                missing |= {p for p in self.index.paths_under(os.path.abspath(folder)) if p not in present}
        gone = sorted(p for p in missing if _vanished(p, walk.listed))
        removed = self.index.remove_documents(gone) if gone else 0
        return removed, len(missing) - len(gone)

    def _plan(self, files: list[Path], report: IndexReport) -> list[_Job]:
        jobs = []
        for path in files:
            try:
                job = self._plan_one(path, report)
            except STORAGE_ERRORS as exc:
                report.failures.append(Failure(str(path), None, f"cannot record it in the index: {exc}"))
                continue
            if job is not None:
                jobs.append(job)
        return jobs

    def _plan_one(self, path: Path, report: IndexReport) -> _Job | None:
        key = str(path)
        try:
            st = path.stat()
        except OSError as exc:
            report.failures.append(Failure(key, None, f"cannot read: {exc.strerror or exc}"))
            return None
        current, indexing = self.index.lookup(key)
        unchanged = current is not None and (current.size, current.mtime_ns) == (st.st_size, st.st_mtime_ns)
        if (
            current is not None
            and unchanged
            and current.status == "failed"
            and indexing is None
            and not self._retry(current)
        ):
            report.failures.append(Failure(key, None, current.error or "failed", previous=True))
            return None
        fresh = (
            current
            if current is not None
            and current.status == "done"
            and not (self.retry_failed and self._has_page_errors(current))
            else None
        )
        if fresh is not None and indexing is None and unchanged:
            self._skip(fresh, report)
            return None
        try:
            sha = sha256_file(path)
        except OSError as exc:
            report.failures.append(Failure(key, None, f"cannot read: {exc.strerror or exc}"))
            return None
        if fresh is not None and fresh.sha256 == sha:
            if indexing is not None:
                self.index.discard_in_progress(indexing.id)
            self.index.touch_document(fresh.id, st.st_size, st.st_mtime_ns)
            self._skip(fresh, report)
            return None
        try:
            n_pages = self._page_count(path)
        except PdfError as exc:
            self.index.record_failure(key, st.st_size, st.st_mtime_ns, sha, str(exc))
            report.failures.append(Failure(key, None, str(exc)))
            return None
        resume_id, done = None, set()
        if indexing is not None and indexing.sha256 == sha and indexing.n_pages == n_pages:
            resume_id, done = indexing.id, self.index.stored_page_numbers(indexing.id)
        return _Job(path, st.st_size, st.st_mtime_ns, sha, n_pages, resume_id, done)

    def _page_count(self, path: Path) -> int:
        assert self._worker is not None
        return self._worker.page_count(path, self.password)

    def _retry(self, failed_doc) -> bool:
        """Try an unchanged file that failed before? With --retry-failed, or a password for one that needed it."""
        needed_password = (failed_doc.error or "").startswith("encrypted")
        return self.retry_failed or (self.password is not None and needed_password)

    def _has_page_errors(self, doc) -> bool:
        return any(kind == "error" for _, _, kind, _ in self.index.page_errors(doc.id))

    def _skip(self, doc, report: IndexReport) -> None:
        report.skipped_files += 1
        for path, page_no, kind, message in self.index.page_errors(doc.id):
            if kind == "error":
                report.failures.append(Failure(path, page_no, message, previous=True))

    def _index_file(self, job: _Job, report: IndexReport) -> None:
        key = str(job.path)
        try:
            n_pages = self._page_count(job.path)
            if n_pages != job.n_pages:
                raise PdfError(f"the file changed while being indexed ({n_pages} pages, {job.n_pages} before)")
            doc_id = job.resume_id
            if doc_id is None:
                doc_id = self.index.begin_document(key, job.size, job.mtime_ns, job.sha256, job.n_pages)
            pages: list[tuple[int, int, int, np.ndarray]] = []
            errors: list[tuple[int, str, str]] = []
            feats: list[ImageFeatures | None] = []
            wanted = [n for n in range(1, job.n_pages + 1) if n not in job.done_pages]
            if self.pages_source is not None:
                outcomes = self.pages_source.run(job.path, wanted, features=self._with_features)
                done = (self._take_outcome(out, key, pages, errors, report, feats) for out in outcomes)
            else:
                done = (self._one_page(job.path, n, key, pages, errors, report, feats) for n in wanted)
            for number, stored in zip(wanted, done, strict=True):
                self.progress.advance(1, f"{job.path.name} p.{number}")
                if len(pages) >= self.commit_pages or (errors and not stored):
                    self.index.add_pages(doc_id, pages, errors, features=self._features_arg(feats))
                    pages, errors, feats = [], [], []
            if pages or errors:
                self.index.add_pages(doc_id, pages, errors, features=self._features_arg(feats))
            self.index.finish_document(doc_id)
            report.indexed_files += 1
        except PdfError as exc:  # changed or vanished since planning
            self.index.record_failure(key, job.size, job.mtime_ns, job.sha256, str(exc))
            report.failures.append(Failure(key, None, str(exc)))

    @property
    def _with_features(self) -> bool:
        return self.index.keeps_features and hasattr(self.retriever, "embed_pages")

    def _features_arg(self, feats: list) -> list | None:
        return feats if self._with_features else None

    def _one_page(
        self, path: Path, number: int, key: str, pages: list, errors: list, report: IndexReport, feats: list
    ) -> bool:
        """Render (in the render child) and embed one page into `pages` (its vision-tower output
        into `feats`), or record why not in `errors`."""
        assert self._worker is not None
        rendered = self._worker.try_render(path, number - 1, self.render, self.password)
        if isinstance(rendered, str):  # why it could not be rendered
            reason = rendered
            errors.append((number, "error", reason))
            report.failures.append(Failure(key, number, reason))
            return False
        if rendered.warnings:
            errors.append((number, "warning", rendered.warnings))
            report.warnings.append(Failure(key, number, rendered.warnings))
        try:
            if self._with_features:
                ((vectors, features),) = self.retriever.embed_pages([rendered.image])  # (n_tokens, dim), ImageFeatures
            else:
                (vectors,), features = self.retriever.embed_images([rendered.image]), None  # (n_tokens, dim)
            vectors = np.asarray(vectors)
            if vectors.ndim != 2 or vectors.shape[1] != self.index.dim or len(vectors) == 0:
                raise ValueError(f"the retriever returned an array of shape {vectors.shape}")
            if not np.all(np.isfinite(vectors)):
                raise ValueError("the retriever returned non-finite values")
        except _embed_errors() as exc:  # an image the retriever refuses (e.g. an extreme aspect ratio)
            reason = f"cannot embed: {type(exc).__name__}: {exc}"
            errors.append((number, "error", reason))
            report.failures.append(Failure(key, number, reason))
            return False
        width, height = rendered.image.size
        pages.append((number, width, height, vectors))
        feats.append(features)
        report.pages += 1
        return True

    def _take_outcome(self, out, key: str, pages: list, errors: list, report: IndexReport, feats: list) -> bool:
        """A page rendered and embedded by the pages_source: recorded as _one_page records its own."""
        number = out.page_no
        if out.warnings:
            errors.append((number, "warning", out.warnings))
            report.warnings.append(Failure(key, number, out.warnings))
        vectors = np.asarray(out.vectors if out.vectors is not None else np.zeros((0, 0), dtype=np.float32))
        reason = out.error
        if reason is None and (vectors.ndim != 2 or vectors.shape[1] != self.index.dim or len(vectors) == 0):
            reason = f"cannot embed: ValueError: the retriever returned an array of shape {vectors.shape}"
        elif reason is None and not np.all(np.isfinite(vectors)):
            reason = "cannot embed: ValueError: the retriever returned non-finite values"
        if reason is not None:
            errors.append((number, "error", reason))
            report.failures.append(Failure(key, number, reason))
            return False
        pages.append((number, out.width, out.height, vectors))
        feats.append(out.features)
        report.pages += 1
        return True

    def _repair_features(self, report: IndexReport) -> None:
        """Recompute the page features a writer found damaged (render + vision tower; the vectors are kept)."""
        if not self._with_features:
            return
        assert self._worker is not None
        failed: tuple[type[BaseException], ...] = (PdfError, *_embed_errors())
        for doc_id, missing in self.index.features_to_repair().items():
            path = Path(next((d.path for d in self.index.documents() if d.id == doc_id), ""))
            computed = []
            try:
                for _, page_no in missing:
                    rendered = self._worker.try_render(path, page_no - 1, self.render, self.password)
                    if isinstance(rendered, str):
                        raise PdfError(rendered)
                    embeds, grid = self.retriever.image_features(rendered.image)
                    computed.append((page_no, ImageFeatures(embeds, grid, self.retriever.vision_hash)))
            except failed as exc:
                report.warnings.append(Failure(str(path), None, f"page features not repaired: {exc}"))
                continue
            self.index.add_features(doc_id, computed)


def _vanished(path: str, listed: dict[str, int]) -> bool:
    """True only when `path` is certainly gone: `lstat` finds neither it nor some folders above it,
    and the folder above the highest missing one was listed in this run and is not empty (an
    empty folder may be a share that is not mounted). Any other error means: keep it."""
    missing = path
    while True:
        try:
            os.lstat(missing)
        except FileNotFoundError:
            parent = os.path.dirname(missing)
            if parent in listed:
                return listed[parent] > 0
            if parent == missing:
                return False
            missing = parent
            continue
        except OSError:  # permission denied, I/O error, stale network handle: cannot tell
            return False
        return False  # it exists (or a folder above it does, unlisted): not gone


def remove_targets(index: Index, paths: Sequence[str | os.PathLike]) -> list[str]:
    """The catalogued paths `remove` would forget: the files given, and every file under a folder given."""
    targets: list[str] = []
    known = {d.path for d in index.documents()}
    for raw in paths:
        p = text(os.path.abspath(Path(raw).expanduser()))
        if p in known:
            targets.append(p)
        targets += index.paths_under(p)
    return sorted(set(targets))


def remove(index: Index, paths: Sequence[str | os.PathLike], targets: list[str] | None = None) -> list[str]:
    """Forget files, or every file under a folder; returns the paths removed."""
    if targets is None:
        targets = remove_targets(index, paths)
    if targets:
        index.remove_documents(targets)  # filtered out at search time; `colrag compact` reclaims the space
        index.refresh()
    return targets
