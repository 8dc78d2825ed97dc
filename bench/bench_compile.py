"""Model load time per backend, and OpenVINO's compile cache cold and warm.

    python bench/bench_compile.py --bundle ~/.cache/colrag-bench/bundles/retriever-int8 [--kind retriever|generator]

Each load runs in a fresh process. For OpenVINO, an empty COLRAG_HOME first (cold: every
graph is compiled and written to $COLRAG_HOME/cache/openvino), then the same home again
(warm: the compiled blobs are read back). onnxruntime has no such cache; its row is the
plain load for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import machine, peak_rss_gb


def worker(args) -> None:
    import colrag

    t0 = time.perf_counter()
    if args.kind == "retriever":
        model = colrag.Retriever.load(args.bundle, backend=args.backend, precision=args.precision)
    else:
        model = colrag.Generator.load(args.bundle, backend=args.backend, precision=args.precision, prefix_cache=False)
    print(json.dumps({"load_s": time.perf_counter() - t0, "runtimes": model.runtimes, "peak_gb": peak_rss_gb()}))


def run(args, backend: str, precision: str, home: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--bundle",
        args.bundle,
        "--kind",
        args.kind,
        "--backend",
        backend,
        "--precision",
        precision,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLRAG_HOME": str(home)})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--kind", choices=["retriever", "generator"], default="retriever")
    ap.add_argument("--precision", nargs="+", default=["bf16", "f32"], help="OpenVINO precisions to time")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="openvino", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.precision = args.precision[0]
        worker(args)
        return
    print(f"machine: {machine()}\nbundle: {args.bundle}\n")
    print("| backend | precision | cache | load (s) | peak RSS (GB) | graphs |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("onnxruntime", "f32", "—")] + [("openvino", p, c) for p in args.precision for c in ("cold", "warm")]
        for backend, precision, cache in rows:
            res = run(args, backend, precision, Path(tmp) / f"home-{precision}")
            if "error" in res:
                print(f"| {backend} | {precision} | {cache} | failed: {res['error']} | | |", flush=True)
                continue
            graphs = ", ".join(f"{k} {v}" for k, v in res["runtimes"].items())
            print(
                f"| {backend} | {precision} | {cache} | {res['load_s']:.2f} | {res['peak_gb']:.1f} | {graphs} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
