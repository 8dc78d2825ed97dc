"""Pages rendered and embedded on a Ray cluster (`colrag index --ray [ADDRESS]`).

    with RayPages(bundle_dir, address=None, workers=2) as pool:   # None: a local Ray on this machine
        for out in pool.run(pdf_path, [1, 2, 3], features=True):   # PageOutcome, in page order
            ...

`features=True`: each page also comes back with its vision-tower output (ImageFeatures, from
the same pass that embeds it: Retriever.embed_pages), for an index that keeps page features.
The Indexer (`Indexer(pages_source=pool)`, `colrag index --ray`) stores the outcomes through
its one writer exactly as pages embedded in its own process.

Install with `pip install 'colrag[ray]'`; nothing imports ray until a RayPages is made.

Each Ray worker is an actor that loads the retriever bundle once (Retriever.load) and then
renders and embeds the pages sent to it; a page is the unit of work. The PDF's bytes go to
the cluster once per file (ray.put), so workers need no shared filesystem; the retriever
bundle must be at the same path on every node (a shared or copied models folder).

Failures: a page that cannot be rendered or embedded comes back as that page's failure, with
the same reason as in a single-process run (retrying would fail the same way). A worker
that dies (killed, out of memory, node lost) is restarted by Ray and its pages retried
(`retries` times, Ray's max_restarts / max_task_retries); a page still lost after that is
reported as that page's failure. Results come back in page order, so the index writer
(one process, the caller) commits them in batches exactly as a single-process run does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ColragError
from .render import DOCUMENT_KINDS, PdfError, RenderOptions
from .render_worker import DEFAULT_RENDER_TIMEOUT, RenderWorker
from .vlm.image_features import ImageFeatures

WINDOW_PER_WORKER = 2  # pages in flight per worker (one running, one queued)
RETRIES = 2
LOCAL_WORKERS = 2  # workers of a local Ray when none are asked for


@dataclass
class PageOutcome:
    page_no: int
    width: int = 0
    height: int = 0
    vectors: np.ndarray | None = None  # (n_tokens, dim) float32
    features: ImageFeatures | None = None  # with run(..., features=True)
    warnings: str = ""
    error: str | None = None  # 'cannot render: ...' / 'cannot embed: ...' / 'lost on the Ray cluster: ...'


class RayUnavailable(ColragError):
    """Ray is not installed, or the cluster cannot be reached."""


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise RayUnavailable("--ray needs the ray package: pip install 'colrag[ray]'") from None
    return ray


class PageWorker:
    """Runs inside a Ray actor: one retriever, loaded once; renders (in a render child, under the
    time limit, like the single-process indexer) and embeds single pages."""

    def __init__(
        self,
        bundle: str,
        threads: int | None,
        render: dict,
        password: str | None,
        backend: str | None,
        precision: str | None,
        render_timeout: float = DEFAULT_RENDER_TIMEOUT,
        render_command: list[str] | None = None,
    ):
        from .vlm.retriever import Retriever

        self.retriever = Retriever.load(bundle, threads=threads, backend=backend, precision=precision)
        self.render = RenderOptions(**render)
        self.password = password
        # mupdf can hang on a hostile page: pages render in a child process that is killed after
        # render_timeout seconds (colrag/render_worker.py); it reads the document from a private
        # temporary copy of the bytes Ray sent, since nodes share no filesystem.
        self._renderer = RenderWorker(render_timeout, render_command)
        self._tmp = tempfile.mkdtemp(prefix="colrag-ray-")
        self._doc_path: Path | None = None
        self._doc_key: str | None = None

    def _document(self, data: bytes, key: str, filetype: str, name: str) -> Path:
        """This document's bytes as a file the render child can open (one file at a time)."""
        if self._doc_key != key or self._doc_path is None:
            if self._doc_path is not None:
                self._doc_path.unlink(missing_ok=True)
                self._doc_path, self._doc_key = None, None
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).name)[-80:] or "document"
            path = Path(self._tmp) / f"{key[:16]}-{safe}"
            with open(path, "wb") as f:  # our own file, in our own 0700 folder
                f.write(data)
            self._doc_path, self._doc_key = path, key
        return self._doc_path

    def close(self) -> None:
        self._renderer.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def page(
        self, data: bytes, key: str, page_no: int, filetype: str = "pdf", features: bool = False, name: str = ""
    ) -> dict:
        """Render and embed one page (and keep its vision-tower output with `features`);
        render/embed errors come back as the page's failure, with the single-process reasons."""
        try:
            path = self._document(data, key, filetype, name or f"document.{filetype}")
            rendered = self._renderer.try_render(path, page_no - 1, self.render, self.password)
        except PdfError as exc:  # the file itself cannot be opened (damaged, wrong password, too slow)
            return {"page_no": page_no, "error": f"cannot render: PdfError: {exc}"}
        if isinstance(rendered, str):  # why the page could not be rendered (mupdf, time limit, crash)
            return {"page_no": page_no, "error": rendered}
        feats: dict[str, Any] = {}
        try:
            if features:
                ((vectors, f),) = self.retriever.embed_pages([rendered.image])
                feats = {"embeds": f.embeds, "grid": np.asarray(f.grid_thw), "vision_hash": f.vision_hash}
            else:
                (vectors,) = self.retriever.embed_images([rendered.image])
            vectors = np.asarray(vectors, dtype=np.float32)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            return {
                "page_no": page_no,
                "warnings": rendered.warnings,
                "error": f"cannot embed: {type(exc).__name__}: {exc}",
            }
        image: Any = rendered.image  # a PIL image
        width, height = image.size
        out = {"page_no": page_no, "width": width, "height": height, "vectors": vectors, "warnings": rendered.warnings}
        return {**out, **feats}


class RayPages:
    """A pool of Ray actors (PageWorker) and the order-keeping loop that feeds them."""

    def __init__(
        self,
        bundle: str | os.PathLike,
        *,
        address: str | None = None,
        workers: int | None = None,
        threads: int | None = None,
        render: RenderOptions | None = None,
        password: str | None = None,
        backend: str | None = None,
        precision: str | None = None,
        retries: int = RETRIES,
        local_options: dict | None = None,
        render_timeout: float = DEFAULT_RENDER_TIMEOUT,
        render_command: list[str] | None = None,
    ):
        ray = self.ray = _import_ray()
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if address:
                kwargs["address"] = address
            else:  # a local cluster of `workers` CPUs on this machine
                kwargs.update(num_cpus=workers or LOCAL_WORKERS, object_store_memory=256 << 20)
                kwargs.update(local_options or {})
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayUnavailable(f"cannot reach the Ray cluster {address or '(local)'}: {exc}") from None
            self._started = True
        try:
            actor = ray.remote(num_cpus=1, max_restarts=retries, max_task_retries=retries)(PageWorker)
            render_opts = (render or RenderOptions()).as_dict()
            n = workers or max(1, int(ray.cluster_resources().get("CPU", LOCAL_WORKERS)))
            bundle_path = str(Path(bundle).resolve())
            self.workers = [
                actor.remote(
                    bundle_path, threads, render_opts, password, backend, precision, render_timeout, render_command
                )
                for _ in range(n)
            ]
        except BaseException:
            self.close()
            raise
        self.retries = retries

    def run(self, pdf: str | os.PathLike, pages: list[int], *, features: bool = False) -> Iterator[PageOutcome]:
        """Render and embed `pages` (1-based) of one document on the cluster; outcomes in page order."""
        ray = self.ray
        data = Path(pdf).read_bytes()
        filetype = (DOCUMENT_KINDS.get(Path(pdf).suffix.lower()) or "PDF").lower()
        key = hashlib.sha256(data).hexdigest()
        ref = ray.put(data)
        todo = deque(pages)
        flight: deque[tuple[int, Any]] = deque()
        window = WINDOW_PER_WORKER * len(self.workers)
        turn = 0
        while todo or flight:
            while todo and len(flight) < window:
                page_no = todo.popleft()
                worker = self.workers[turn % len(self.workers)]
                flight.append((page_no, worker.page.remote(ref, key, page_no, filetype, features, Path(pdf).name)))
                turn += 1
            page_no, future = flight.popleft()
            try:
                result = ray.get(future)
            except ray.exceptions.RayError as exc:  # a worker that died more often than `retries`
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                yield PageOutcome(page_no, error=f"lost on the Ray cluster after {self.retries} retries: {reason}")
                continue
            feats = None
            if result.get("embeds") is not None:
                feats = ImageFeatures(result["embeds"], result["grid"], result.get("vision_hash"))
            yield PageOutcome(
                page_no,
                features=feats,
                width=int(result.get("width", 0)),
                height=int(result.get("height", 0)),
                vectors=result.get("vectors"),
                warnings=str(result.get("warnings", "")),
                error=result.get("error"),
            )

    def close(self) -> None:
        workers = getattr(self, "workers", [])
        with contextlib.suppress(Exception):  # their render children and temporary copies; a dead worker is gone anyway
            self.ray.get([w.close.remote() for w in workers], timeout=30)
        for w in workers:
            self.ray.kill(w)
        self.workers = []
        if self._started:
            self.ray.shutdown()
            self._started = False

    def __enter__(self) -> RayPages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
