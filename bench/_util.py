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


def machine() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma")
                flags = " ".join(f for f in wanted if f in line.split())
                break
        model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    import onnxruntime

    threads = os.environ.get("OMP_NUM_THREADS", "default")
    return f"{model}; {os.cpu_count()} cores; flags: {flags}; onnxruntime {onnxruntime.__version__}; threads {threads}"


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
