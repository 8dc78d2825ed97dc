"""`colrag doctor`: is this installation able to index, search and answer? One check per line.

Each check gives a status — ok, warn (works, but look), FAIL (a command will fail) —
what it found, and for warn/FAIL what to do. Checks never raise: a check that breaks
is reported as a FAIL naming the exception.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_PYTHON = (3, 11)
LOW_DISK_BYTES = 2_000_000_000  # below this, indexing (~0.2 MB a page) and model installs run out soon
GB = 1_000_000_000

# (module to import, what it is for, pip package)
REQUIRED_MODULES = (
    ("numpy", "arrays", "numpy"),
    ("PIL", "images", "pillow"),
    ("pymupdf", "PDF rendering", "pymupdf"),
    ("tokenizers", "tokenization", "tokenizers"),
)
INSTALL_MODULES = (
    ("huggingface_hub", "downloads"),
    ("torch", "export"),
    ("transformers", "export"),
    ("onnx", "export"),
)


@dataclass
class Check:
    name: str
    status: str  # ok | warn | FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<11}  {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text


def _version(module) -> str:
    return str(getattr(module, "__version__", "") or "")


# -- the checks ----------------------------------------------------------------------------


def check_python() -> Check:
    v = sys.version_info
    text = f"{v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if (v.major, v.minor) < MIN_PYTHON:
        return Check("python", FAIL, text, f"use Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer")
    return Check("python", OK, text)


def check_onnxruntime() -> Check:
    try:
        import onnxruntime as ort
    except Exception as exc:  # ImportError, or a broken native library (OSError)
        return Check("onnxruntime", FAIL, f"cannot import: {_first_line(exc)}", "pip install onnxruntime")
    providers = ort.get_available_providers()
    detail = f"{ort.__version__}, providers: {', '.join(providers)}"
    device = (os.environ.get("COLRAG_DEVICE") or "auto").lower()
    if device == "cuda" and "CUDAExecutionProvider" not in providers:
        return Check(
            "onnxruntime",
            WARN,
            detail + "; COLRAG_DEVICE=cuda but there is no CUDA provider (the CPU is used)",
            "pip install onnxruntime-gpu, or unset COLRAG_DEVICE",
        )
    return Check("onnxruntime", OK, detail)


def check_backend(backend: str | None = None, precision: str | None = None) -> Check:
    """Where each graph would run (colrag.vlm.backends), with the runtime's version and the precision."""
    from .errors import ColragError
    from .vlm.backends import OPENVINO_HINT, cpu_has_bf16, describe, openvino_installed, requested_backend

    try:
        graphs = describe(backend, precision)
    except ColragError as exc:
        return Check(
            "backend",
            FAIL,
            str(exc),
            "use --backend/--precision (COLRAG_BACKEND/COLRAG_PRECISION) values this machine has",
        )
    detail = f"{requested_backend(backend)}: " + "; ".join(f"{g} on {where}" for g, where in graphs.items())
    if not openvino_installed():
        return Check("backend", OK, f"{detail} (OpenVINO not installed: {OPENVINO_HINT} runs the vision graphs faster)")
    return Check("backend", OK, detail + ("" if cpu_has_bf16() else "; this CPU has no native bf16"))


def check_module(module: str, purpose: str, package: str) -> Check:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        return Check(module, FAIL, f"cannot import ({purpose}): {_first_line(exc)}", f"pip install {package}")
    return Check(module, OK, _version(mod) or "imported")


def check_faiss() -> Check:
    """FAISS loads and does what the index asks of it, with pymupdf loaded too: an SQ8 segment written,
    memory-mapped and decoded; k-means through an IVF index's train; a page-lists file read back."""
    import tempfile

    import numpy as np
    import pymupdf  # noqa: F401  (loaded first, as `colrag index` does: faiss's Python k-means breaks then)

    from .store import coarse, faiss_io, lists
    from .store import segments as sg

    faiss = faiss_io.faiss_module()
    rng = np.random.default_rng(0)
    x = sg.unit_rows(rng.standard_normal((2048, 16)))
    with tempfile.TemporaryDirectory(prefix="colrag-doctor-") as tmp:
        folder = Path(tmp)
        seg = sg.SegmentWriter(folder, 16, 1, 0, None, 0)
        seg.append(x)
        seg.write()
        seg.committed()
        codes = sg.SegmentReader(folder, 16).rows(sg.segment_name(1, 1), len(x))
        if np.abs(sg.decode(codes) - x).max() > 1 / 255 + 1e-6:
            return Check(
                "faiss", FAIL, "SQ8 vectors do not decode to what was stored", "pip install --force-reinstall faiss-cpu"
            )
        quantizer = coarse.train(x)
        ids = coarse.assign(quantizer, x[:64])
        if not np.array_equal(ids, np.argmax(x[:64] @ coarse.centroids(quantizer).T, axis=1)):
            return Check(
                "faiss",
                FAIL,
                "the coarse quantizer assigns rows to the wrong centroids",
                "pip install --force-reinstall faiss-cpu",
            )
        faiss_io.write_index(
            lists.build(int(quantizer.ntotal), np.array([7]), [np.unique(ids)]), folder, lists.lists_name(1)
        )
        page_lists = lists.PageLists(faiss_io.read_index(folder, lists.lists_name(1), mmap="lists"), 1, 7)
        if page_lists.all_page_ids().tolist() != [7]:
            return Check(
                "faiss", FAIL, "a page-lists file does not read back", "pip install --force-reinstall faiss-cpu"
            )
    return Check(
        "faiss", OK, f"{_version(faiss)}: SQ8 vectors, k-means, page lists work ({faiss.omp_get_max_threads()} threads)"
    )


def check_extras(bundles_ok: bool) -> Check:
    missing = [m for m, _ in INSTALL_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return Check("extras", OK, "export and install extras present (models can be installed and exported)")
    detail = f"not installed: {', '.join(missing)} (needed only to install or export models)"
    if bundles_ok:
        return Check("extras", OK, detail)
    return Check("extras", WARN, detail, "pip install 'colrag[export,install]' to run `colrag models install`")


def check_bundle(part: str, bundle: Path, *, full: bool) -> Check:
    from .errors import BundleError
    from .vlm.bundle import load_manifest, verify_bundle

    fix = f"colrag models install --only {part}"
    if not bundle.exists():
        need = "`colrag index` and `colrag search` need it" if part == "retriever" else "`colrag ask` needs it"
        return Check(part, FAIL, f"no bundle at {bundle} ({need})", fix)
    try:
        manifest = (verify_bundle if full else load_manifest)(bundle, part)
        if part == "generator":
            _check_shared_vision(bundle, manifest)
    except BundleError as exc:
        return Check(part, FAIL, str(exc), fix + " --reinstall")
    size = sum(int(f.get("size", 0)) for f in manifest["files"].values())
    source = manifest.get("source") or "?"
    if manifest.get("revision"):
        source += f"@{str(manifest['revision'])[:12]}"
    quant = (
        (manifest.get("quantization") or {}).get("scheme") if isinstance(manifest.get("quantization"), dict) else None
    )
    how = "checksums verified" if full else "files present (--full re-hashes them)"
    return Check(
        part,
        OK,
        f"{bundle}: {source}, {len(manifest['files'])} files, {size / GB:.2f} GB{', ' + quant if quant else ''}; {how}",
    )


def _check_shared_vision(bundle: Path, manifest: dict) -> None:
    """A generator that shares the retriever's vision graph needs that bundle, unchanged."""
    if "vision" in manifest.get("graphs", {}) or not manifest.get("shared_vision"):
        return
    from .vlm.generator import Generator

    Generator.vision_graph(bundle, manifest)  # a BundleError says what is wrong with the shared graph


def check_index(path: Path, retriever_manifest: dict | None, *, full: bool) -> Check:
    from .errors import ColragError

    if not path.exists():
        return Check("index", WARN, f"no index at {path} yet", "colrag index DIR (a folder of PDFs)")
    try:
        from .store import Index
    except ImportError:  # the index store is not part of this build
        exists = (path / "manifest.json").is_file()
        return Check("index", OK if exists else FAIL, f"{path}: manifest {'present' if exists else 'missing'}")
    try:
        with Index.open(path) as index:
            stats = index.stats()
            report = index.check(vectors=full)
    except sqlite3.DatabaseError as exc:  # a damaged catalog file
        return Check(
            "index",
            FAIL,
            f"{path}: the catalog cannot be read ({_first_line(exc)})",
            f"rebuild it: colrag index DIR --index {path}",
        )
    except ColragError as exc:
        if not (path / "manifest.json").is_file():
            return Check("index", FAIL, str(exc), "give --index the name or folder of an existing index")
        return Check("index", FAIL, str(exc), f"rebuild it: colrag index DIR --index {path}")
    detail = f"{path}: {stats['documents']} documents, {stats['pages']} pages, {stats['bytes_on_disk'] / 1e6:.1f} MB"
    if not report.ok:
        more = f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        return Check(
            "index",
            FAIL,
            f"{detail}; damaged: {report.problems[0]}{more}",
            f"rebuild it: colrag index DIR --index {path}",
        )
    if retriever_manifest is not None:
        from .vlm.bundle import bundle_id

        built = (index.manifest.get("retriever") or {}).get("bundle_id")
        if built and built != bundle_id(retriever_manifest):
            return Check(
                "index",
                FAIL,
                f"{detail}; built with another retriever bundle ({built}) than the installed one",
                "re-index into a new index (colrag index DIR --index NEW), "
                "or reinstall the retriever it was built with",
            )
    failed = stats.get("failed_documents", 0) + stats.get("failed_pages", 0)
    if failed:
        return Check(
            "index",
            WARN,
            f"{detail}; {stats['failed_documents']} documents and {stats['failed_pages']} pages failed",
            "colrag status shows them",
        )
    if stats["pages"] == 0:
        return Check("index", WARN, f"{detail}: empty", "colrag index DIR")
    return Check("index", OK, detail + ("; vectors checked" if full else ""))


def check_disk(home: Path) -> Check:
    from .install import free_bytes

    free = free_bytes(home)
    detail = f"{free / GB:.1f} GB free for {home}"
    if free < LOW_DISK_BYTES:
        return Check(
            "disk", WARN, detail, "free some space: indexing stores ~0.2 MB a page, installing models needs ~28 GB"
        )
    return Check("disk", OK, detail)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # a doctor must not die of the disease it looks for
        return Check(
            name,
            FAIL,
            f"the check itself failed: {exc.__class__.__name__}: {_first_line(exc)}",
            "run with COLRAG_DEBUG=1 and report it",
        )


def run_checks(
    *,
    models_dir: str | os.PathLike | None = None,
    index: str | os.PathLike | None = None,
    full: bool = False,
    backend: str | None = None,
    precision: str | None = None,
) -> list[Check]:
    """Every check, in the order a user would fix them."""
    from .errors import ColragError
    from .paths import colrag_home, generator_dir, index_dir, retriever_dir
    from .vlm.bundle import load_manifest

    checks = [
        _guard("python", check_python),
        _guard("onnxruntime", check_onnxruntime),
        _guard("backend", lambda: check_backend(backend, precision)),
    ]
    checks += [_guard(m, functools.partial(check_module, m, p, k)) for m, p, k in REQUIRED_MODULES]
    checks.append(_guard("faiss", check_faiss))
    home = colrag_home()
    checks.append(Check("home", OK, f"{home} (set COLRAG_HOME to move it)"))
    rdir, gdir = retriever_dir(None, models_dir), generator_dir(None, models_dir)
    bundles = [
        _guard("retriever", lambda: check_bundle("retriever", rdir, full=full)),
        _guard("generator", lambda: check_bundle("generator", gdir, full=full)),
    ]
    checks += bundles
    checks.append(_guard("extras", lambda: check_extras(all(c.status == OK for c in bundles))))
    try:
        retriever_manifest = load_manifest(rdir, "retriever") if bundles[0].status == OK else None
    except ColragError:
        retriever_manifest = None
    try:
        ipath = index_dir(index)
    except ColragError as exc:
        checks.append(Check("index", FAIL, str(exc), "give --index a name or a folder path"))
    else:
        checks.append(_guard("index", lambda: check_index(ipath, retriever_manifest, full=full)))
    checks.append(_guard("disk", lambda: check_disk(home)))
    return checks


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
