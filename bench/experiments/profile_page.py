"""Where a page embedding's time goes, per onnxruntime op type (its built-in profiler).

    python bench/experiments/profile_page.py ~/.cache/colrag-bench/bundles/retriever-int8 [--pdf F --page N]

Embeds the page once to warm up, then once with profiling on, through colrag.Retriever
(same sessions, same options as `colrag index`: colrag.vlm.runtime.create_session plus
enable_profiling). Prints, per graph, the summed kernel time of each op type.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import colrag.vlm.retriever as retriever_mod  # noqa: E402  (after the sys.path line: runs as a script)
from bench._util import PDF_DIR, render_page  # noqa: E402  (after the sys.path line: runs as a script)
from colrag.vlm.runtime import configured_threads  # noqa: E402  (after the sys.path line: runs as a script)

PROFILE_DIR = Path(tempfile.mkdtemp(prefix="colrag-profile-"))


def _profiled_session(path, *, threads=None, device=None):
    """colrag's session options (colrag.vlm.runtime.create_session) plus profiling; CPU only."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if configured_threads(threads):
        opts.intra_op_num_threads = configured_threads(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(PROFILE_DIR / Path(path).stem)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--pdf", type=Path, default=PDF_DIR / "03_chart_usda_ag_energy_roundup.pdf")
    ap.add_argument("--page", type=int, default=1)
    args = ap.parse_args()
    retriever_mod.create_session = _profiled_session
    r = retriever_mod.Retriever.load(args.bundle)
    page = render_page(args.pdf, args.page, r.max_pixels)
    r.embed_images([page])  # warm-up (profiled too; the second run is the one reported)
    r.embed_images([page])
    files = {}
    for name in ("_vision", "_text"):
        sess = getattr(r, name)
        files[name.strip("_")] = sess.end_profiling()
    for graph, file in files.items():
        events = json.loads(Path(file).read_text())
        runs = [e for e in events if e.get("name") == "model_run"]
        last_start = runs[-1]["ts"] if runs else 0
        by_op: dict[str, float] = defaultdict(float)
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_start:
                by_op[e["args"]["op_name"]] += e["dur"] / 1e6
        total = runs[-1]["dur"] / 1e6 if runs else sum(by_op.values())
        print(f"\n{graph}: run {total:.2f} s, kernels {sum(by_op.values()):.2f} s")
        for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {op:28s} {t:7.2f} s  {t / total:5.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
