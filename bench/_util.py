"""Small helpers shared by the benchmarks: subprocess workers, medians, machine facts."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PDF_DIR = ROOT.parent / "shared" / "data" / "pdfs"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux → GB


def summary(times: list[float], digits: int = 2) -> str:
    med = statistics.median(times)
    spread = (max(times) - min(times)) / 2 if len(times) > 1 else 0.0
    return f"{med:.{digits}f} ± {spread:.{digits}f}"


def run_worker(script: Path, args: list[str]) -> dict:
    """Run one variant in a fresh process (clean peak-memory figure); it prints one JSON line last."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def side_by_side_args(description: str, runs: int):
    """The command line shared by the side-by-side benchmarks: one checkpoint for the torch
    reference, colrag bundles as NAME=DIR, a real PDF page, and the hidden --worker switch."""
    import argparse

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="full-size checkpoint (bench/full_checkpoints.py)")
    ap.add_argument(
        "--bundle",
        action="append",
        default=[],
        help="colrag bundle, as DIR or NAME=DIR (repeatable); NAME@BACKEND[/PRECISION]=DIR runs it on that "
        "backend (auto, onnxruntime, openvino) and precision (auto, f32, bf16), e.g. int8@openvino/bf16=DIR",
    )
    ap.add_argument("--pdf", default=str(PDF_DIR / "03_chart_usda_ag_energy_roundup.pdf"))
    ap.add_argument("--page", type=int, default=1)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--worker", choices=["torch", "colrag"], help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="onnxruntime", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    return ap


def parse_bundle_spec(spec: str) -> tuple[str, str, str, str]:
    """'NAME@BACKEND/PRECISION=DIR' -> (NAME@BACKEND/PRECISION, DIR, BACKEND, PRECISION).

    Plain specs run on onnxruntime."""
    name, _, path = spec.rpartition("=")
    _, _, runtime = name.partition("@")
    backend, _, precision = runtime.partition("/")
    return name, path, backend or "onnxruntime", precision or "auto"


def backend_args(backend: str, precision: str) -> list[str]:
    return ["--backend", backend, "--precision", precision]


def variants(args, default_name: str) -> list[tuple[str, list[str]]]:
    """(table row name, worker arguments): transformers first unless skipped, then each bundle."""
    rows = [] if args.skip_torch else [("transformers fp32", ["--worker", "torch"])]
    for spec in args.bundle:
        name, path, backend, precision = parse_bundle_spec(spec)
        rows.append(
            (
                f"colrag {name or default_name}",
                ["--worker", "colrag", "--bundle", path, *backend_args(backend, precision)],
            )
        )
    return rows


def machine() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma")
                flags = " ".join(f for f in wanted if f in line.split())
                break
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    except OSError:
        model = platform.processor()
    import onnxruntime

    from colrag.vlm.backends import openvino_version

    threads = os.environ.get("OMP_NUM_THREADS", "default")
    ov = f"; openvino {openvino_version()}" if openvino_version() else ""
    return (
        f"{model}; {os.cpu_count()} cores; flags: {flags}; onnxruntime {onnxruntime.__version__}{ov}; threads {threads}"
    )


def render_page(pdf: Path, page_no: int, max_pixels: int):
    """Render a PDF page to about `max_pixels` pixels (what `colrag index` gives the retriever)."""
    import pymupdf as fitz  # the `fitz` name is deprecated
    from PIL import Image

    with fitz.open(pdf) as doc:
        page = doc[page_no - 1]
        w, h = page.rect.width, page.rect.height
        zoom = (max_pixels / (w * h)) ** 0.5
        pix = page.get_pixmap(matrix=fitz.Matrix(zoom, zoom), alpha=False)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
