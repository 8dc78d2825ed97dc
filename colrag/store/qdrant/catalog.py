"""`colrag index` and `colrag ask` on a Qdrant index: the catalog facts as Qdrant points.

    with open_catalog("qdrant+edge:/data/ix", RetrieverInfo.of(model)) as index:
        report = Indexer(index, model).run(["docs/"])          # the same Indexer as a local index

QdrantCatalog offers the part of colrag.store.Index that the Indexer, `status`, `remove` and
`ask` use (lookup, begin_document, add_pages, finish_document, record_failure, ...), kept in
the collection itself, not in a local SQLite file (a server is shared by several indexing
machines; a catalog on one of them would diverge from it):

    document point   id uuid5("doc", file), no vectors, payload {"doc": file, "size", "mtime_ns",
                     "sha256", "n_pages", "status": indexing|done|failed, "error",
                     "page_errors": [[page, kind, message], ...], "generation", "serving"}
    page point       as written by QdrantIndex, plus {"width", "height", "gen", "state"}: "indexing"
                     while its document is being indexed (search leaves those out), "ready" after

Visibility: a new or changed document's pages are written with state "indexing" and become
searchable together when finish_document sets its pages' state to "ready" (one Qdrant
operation on a filter). Like a local index, the *previous* version of a changed file stays
searchable until then: each indexing of a file is a generation (payload "generation" of the
document point, "gen" of its pages, part of the page point ids), so the new version's pages
are written beside the old ones; the document point keeps the old version's facts under
"serving" meanwhile, and finish_document drops the other generations once the new is ready.

Crash safety: each step is one Qdrant operation, in an order the next run finishes from any
crash. begin_document writes the document point (new generation, old facts) first;
finish_document forgets the old facts (a crash now finishes this generation), shows the new
pages, deletes the other generations (both visible for a moment), marks the document done;
record_failure deletes the pages, then marks the document failed. A resumed run skips the
pages of its generation already committed (same point ids: never duplicated).

Page features live beside an Edge shard (colrag.store.qdrant.features); a server keeps none.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...errors import IndexStoreError
from ...render import RenderOptions
from ...search import Hit
from ...vlm.image_features import ImageFeatures
from .. import features as pf
from ..catalog import Document
from ..manifest import RetrieverInfo
from .features import EdgeFeatures, edge_features
from .index import QdrantIndex, open_qdrant
from .schema import DOC, GEN, GENERATION, INDEXING, READY, SERVING, STATE, doc_point_id, point_id

DONE = "done"
FAILED = "failed"


def _generation(doc: dict[str, Any]) -> int:
    """The generation a document point's pages are written with (0 for an index written before them)."""
    value = doc.get(GENERATION, 0)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _render_options(manifest: dict[str, Any] | None) -> RenderOptions:
    fields = set(RenderOptions().as_dict())
    render = (manifest or {}).get("render") or {}
    if not isinstance(render, dict) or not set(render) <= fields:
        raise IndexStoreError(f"the index manifest's 'render' is damaged: {render!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in render.values()):
        raise IndexStoreError(f"the index manifest's 'render' values must be positive integers: {render!r}")
    return RenderOptions(**render)


class QdrantCatalog:
    """A Qdrant index seen as the Indexer sees a local Index (see the module docstring)."""

    def __init__(self, ix: QdrantIndex, keep_features: bool):
        self.ix = ix
        self.repair_notes: list[str] = []
        # this session's document ids -> (path, the version being indexed?): a changed file being
        # re-indexed is two Documents, the one search sees and the one being written
        self._paths: dict[int, tuple[str, bool]] = {}
        self._ids: dict[tuple[str, bool], int] = {}
        self._added = False
        self.keeps_features = keep_features and ix.features is not None

    # -- what the Indexer and ask read -------------------------------------------------
    @property
    def path(self) -> str:
        return self.ix.location

    @property
    def manifest(self) -> dict[str, Any]:
        return self.ix.manifest or {}

    @property
    def dim(self) -> int:
        assert self.ix.dim is not None
        return self.ix.dim

    @property
    def render(self) -> RenderOptions:
        return _render_options(self.ix.manifest)

    @property
    def features(self) -> EdgeFeatures | None:
        return self.ix.features

    def _id(self, path: str, indexing: bool = False) -> int:
        key = (path, indexing)
        if key not in self._ids:
            self._ids[key] = len(self._ids) + 1
            self._paths[self._ids[key]] = key
        return self._ids[key]

    def _doc(self, path: str) -> dict[str, Any] | None:
        if self.ix.manifest is None:
            return None
        payload = self.ix.engine.get_meta(doc_point_id(path))
        return payload if payload is not None and payload.get(DOC) == path else None

    def _document(self, payload: dict[str, Any], path: str | None = None) -> Document:
        path = str(payload[DOC]) if path is None else path

        def num(key: str) -> int | None:
            value = payload.get(key)
            return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

        sha = payload.get("sha256")
        return Document(
            self._id(path, payload.get("status") == INDEXING),
            path,
            num("size"),
            num("mtime_ns"),
            sha if isinstance(sha, str) else None,
            num("n_pages"),
            str(payload.get("status", DONE)),
            payload.get("error") if isinstance(payload.get("error"), str) else None,
        )

    def documents(self, status: str | None = None) -> list[Document]:
        if self.ix.manifest is None:
            return []
        docs = [self._document(p) for p in self.ix.engine.scroll_docs() if isinstance(p.get(DOC), str)]
        return sorted((d for d in docs if status is None or d.status == status), key=lambda d: d.path)

    def lookup(self, path: str) -> tuple[Document | None, Document | None]:
        """(the document if done or failed, the document if being indexed): one point per path."""
        payload = self._doc(path)
        if payload is None:
            return None, None
        doc = self._document(payload)
        if doc.status != INDEXING:
            return doc, None
        serving = payload.get(SERVING)
        return (self._document(serving, path) if isinstance(serving, dict) else None), doc

    def _errors(self, payload: dict[str, Any] | None) -> list[tuple[int, str, str]]:
        out = []
        for item in (payload or {}).get("page_errors") or []:
            if isinstance(item, list) and len(item) == 3 and isinstance(item[0], int):
                out.append((int(item[0]), str(item[1]), str(item[2])))
        return out

    def page_errors(self, doc_id: int | None = None) -> list[tuple[str, int, str, str]]:
        """(path, page_no, kind, message) of done documents, or of one document."""
        if doc_id is not None:
            path, indexing = self._paths[doc_id]
            payload = self._doc(path) or {}
            serving = payload.get(SERVING)
            if not indexing and payload.get("status") == INDEXING:  # the version search sees
                payload = serving if isinstance(serving, dict) else {}
            return [(path, p, k, m) for p, k, m in self._errors(payload)]
        out = []
        for payload in self.ix.engine.scroll_docs() if self.ix.manifest is not None else []:
            if payload.get("status") == DONE and isinstance(payload.get(DOC), str):
                out += [(payload[DOC], p, k, m) for p, k, m in self._errors(payload)]
        return sorted(out)

    def stored_page_numbers(self, doc_id: int) -> set[int]:
        """Pages of a document being indexed already committed (stored, or recorded as failed)."""
        path, _ = self._paths[doc_id]
        doc = self._doc(path) or {}
        done = {p for _, p, _ in self.ix.engine.scroll_pages(path, generation=_generation(doc))}
        return done | {p for p, kind, _ in self._errors(doc) if kind == "error"}

    def paths_under(self, folder: str) -> list[str]:
        prefix = folder.rstrip(os.sep) + os.sep
        return [d.path for d in self.documents() if d.path.startswith(prefix)]

    def features_to_repair(self) -> dict[int, list[tuple[int, int]]]:
        return {}  # a damaged feature file is recomputed by `ask`; nothing to repair ahead

    def add_features(self, doc_id: int, features: list[tuple[int, ImageFeatures]]) -> None:
        return None

    def read_features(self, file: str, page: int) -> ImageFeatures:
        """A search hit's stored features (FeaturesUnavailable when there are none to use)."""
        if self.ix.features is None:
            raise pf.FeaturesUnavailable("the index stores no page features")
        doc = self._doc(file)
        return self.ix.features.read(file, page, doc.get("sha256") if doc else None)

    def has_pages(self) -> bool:
        return self.ix.manifest is not None and self.ix.engine.count_pages() > 0

    def search_text(self, query: str, retriever: Any, k: int = 5) -> list[Hit]:
        return self.ix.search_text(query, retriever, k)

    def stats(self) -> dict[str, Any]:
        stats = self.ix.stats()
        docs = self.documents()
        stats["failed"] = [{"path": d.path, "error": d.error or "failed"} for d in docs if d.status == FAILED]
        stats["documents_in_progress"] = sum(d.status == INDEXING for d in docs)
        stats["page_failures"] = [
            {"file": f, "page": p, "reason": m} for f, p, kind, m in self.page_errors() if kind == "error"
        ]
        if self.ix.features is not None:
            stats.update(self.ix.features.stats())
        return stats

    # -- writing ---------------------------------------------------------------------
    def _put_doc(self, path: str, payload: dict[str, Any]) -> None:
        self.ix.ensure_created()
        self.ix.engine.put_meta(doc_point_id(path), {DOC: path, **payload})

    def _delete_pages(self, path: str, n_pages: int | None) -> None:
        pages = {p for _, p, _ in self.ix.engine.scroll_pages(path)} | set(range(1, (n_pages or 0) + 1))
        self.ix.engine.delete_file(path)
        if self.ix.features is not None:
            self.ix.features.remove(path, sorted(pages))

    def begin_document(self, path: str, size: int, mtime_ns: int, sha256: str, n_pages: int) -> int:
        """Start indexing a file as a new generation: its document point first ("indexing", with
        the facts of the version search keeps seeing meanwhile); an abandoned attempt's pages go."""
        old = self._doc(path)
        facts = {"size": size, "mtime_ns": mtime_ns, "sha256": sha256, "n_pages": n_pages}
        if old is None:
            serving, generation = None, 0
        elif old.get("status") == INDEXING:  # an earlier run stopped while indexing another version
            serving, generation = old.get(SERVING), _generation(old) + 1
        else:
            serving, generation = {k: v for k, v in old.items() if k != DOC}, _generation(old) + 1
        state: dict[str, Any] = {"status": INDEXING, "error": None, "page_errors": []}
        self._put_doc(path, {**facts, **state, GENERATION: generation, SERVING: serving})
        if old is None:  # pages stored through the Python API under this name: replaced by this run
            self._delete_pages(path, None)
        elif old.get("status") == INDEXING:
            self.ix.engine.delete_file(path, only_gen=_generation(old))
        self.ix.engine.flush()
        return self._id(path, indexing=True)

    def add_pages(
        self,
        doc_id: int,
        pages: list[tuple[int, int, int, np.ndarray]],
        errors: list[tuple[int, str, str]] = (),  # type: ignore[assignment]
        features: list[ImageFeatures | None] | None = None,
    ) -> None:
        """Store pages (page_no, width, height, vectors) of a document being indexed, and its page
        errors/warnings (page_no, kind, message); features first (a cache: see features.py)."""
        path, _ = self._paths[doc_id]
        doc = self._doc(path) or {}
        generation = _generation(doc)
        if features is not None and self.keeps_features and self.ix.features is not None:
            for (page_no, *_), feats in zip(pages, features, strict=True):
                if feats is not None:
                    self.ix.features.write(path, page_no, str(doc.get("sha256")), feats)
        for page_no, width, height, vectors in pages:
            extra = {"width": int(width), "height": int(height), STATE: INDEXING, GEN: generation}
            self.ix.add_page(path, page_no, vectors, extra=extra, generation=generation)
        self.ix.commit()
        if errors:
            known = [[p, k, m] for p, k, m in self._errors(doc)]
            self.ix.engine.put_meta(
                doc_point_id(path), {**doc, "page_errors": known + [[p, k, m] for p, k, m in errors]}
            )
            self.ix.engine.flush()
        self._added = True

    def finish_document(self, doc_id: int) -> None:
        """The new version replaces the old: its pages become searchable together (one operation),
        the other generations' pages go, then the document is marked done (see the module docstring)."""
        path, _ = self._paths[doc_id]
        doc = {**(self._doc(path) or {}), DOC: path, SERVING: None}
        generation = _generation(doc)
        self.ix.engine.put_meta(doc_point_id(path), doc)  # from here on, a crash finishes this generation
        self.ix.engine.set_file_state(path, READY, generation)
        engine = self.ix.engine
        new = {p for _, p, _ in engine.scroll_pages(path, generation=generation)}
        old = {p for _, p, _ in engine.scroll_pages(path)} - new
        engine.delete_file(path, except_gen=generation)
        if self.ix.features is not None and old:  # features of pages the new version does not have
            self.ix.features.remove(path, sorted(old))
        engine.put_meta(doc_point_id(path), {**doc, "status": DONE})
        engine.flush()

    def record_failure(self, path: str, size: int | None, mtime_ns: int | None, sha256: str | None, error: str) -> None:
        """The whole file could not be indexed: its pages go, then its document point says why."""
        old = self._doc(path)
        self.ix.ensure_created()
        self._delete_pages(path, old.get("n_pages") if old else None)
        facts = {"size": size, "mtime_ns": mtime_ns, "sha256": sha256, "n_pages": None}
        self._put_doc(path, {**facts, "status": FAILED, "error": error, "page_errors": []})
        self.ix.engine.flush()

    def discard_in_progress(self, doc_id: int) -> None:
        """An unfinished re-indexing of a file that is back to the version search sees: its pages go
        and the document point is that version again (or the file is forgotten if there is none)."""
        path, _ = self._paths[doc_id]
        doc = self._doc(path)
        serving = (doc or {}).get(SERVING)
        if doc is None or doc.get("status") != INDEXING or not isinstance(serving, dict):
            self.remove_documents([path])
            return
        self.ix.engine.delete_file(path, only_gen=_generation(doc))
        self.ix.engine.put_meta(doc_point_id(path), {**serving, DOC: path})
        self.ix.engine.flush()

    def touch_document(self, doc_id: int, size: int, mtime_ns: int) -> None:
        path, _ = self._paths[doc_id]
        doc = self._doc(path)
        if doc is not None:
            self.ix.engine.put_meta(doc_point_id(path), {**doc, "size": size, "mtime_ns": mtime_ns})
            self.ix.engine.flush()

    def remove_documents(self, paths: list[str]) -> int:
        """Forget files: pages, document points, page features. Returns how many were known."""
        if self.ix.manifest is None:
            return 0
        docs = {d.path for d in self.documents()}
        gone = [p for p in paths if p in docs or next(iter(self.ix.engine.scroll_pages(p)), None) is not None]
        for p in gone:
            self.ix.remove_file(p)
        self.ix.commit()
        return len(gone)

    def refresh(self) -> None:
        """After a run: build what Qdrant builds (the pooled vectors' graph), drop stray feature files."""
        if self._added:
            self.ix.optimize()
            self._added = False
        if self.ix.features is not None and self.ix.manifest is not None:
            self.ix.features.sweep({point_id(f, p) for f, p, _ in self.ix.engine.scroll_pages(None)})

    # -- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        self.ix.close()

    def __enter__(self) -> QdrantCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_catalog(
    spec: str,
    info: RetrieverInfo | None,
    *,
    create: bool = True,
    page_features: bool = True,
    client: Any = None,
) -> QdrantCatalog:
    """Open a Qdrant index for `colrag index` (create=True, info given) or for `ask`/`status`/`remove`.

    A new index records the retriever, its pixel budget, the render options and (on Edge, when
    the retriever names its vision tower and page_features) the page features' vision tower."""
    retriever = {"bundle_id": info.bundle_id, "name": info.name} if info is not None else None
    ix = open_qdrant(
        spec, create=create, dim=info.dim if info is not None else None, retriever=retriever, client=client
    )
    try:
        if info is not None and ix.manifest is not None and ix.manifest.get("retriever") is None:
            raise IndexStoreError(
                f"index {ix.location} holds precomputed vectors (no retriever): index into another --index"
            )
        wanted = None
        if page_features and info is not None:
            wanted = pf.features_entry(info, pf.manifest_info(ix.manifest or {}))
        if ix.folder is None:
            wanted = None  # a server keeps no page features (features.py)
        ix.extra_manifest = {"max_pixels": info.max_pixels if info else None, "render": RenderOptions().as_dict()}
        if wanted is not None:
            ix.extra_manifest["page_features"] = wanted
            if ix.manifest is not None and pf.manifest_info(ix.manifest) is None:
                ix.update_manifest({"page_features": wanted})  # an older index gains them from now on
            ix.features = edge_features(ix.folder, ix.manifest or {"page_features": wanted})
        return QdrantCatalog(ix, keep_features=wanted is not None)
    except BaseException:
        ix.close()
        raise
