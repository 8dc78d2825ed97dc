"""How long loading a bundle's graphs takes, and what onnxruntime's session options change.

    python bench/experiments/load_options.py BUNDLE_DIR GRAPH [GRAPH ...]   # e.g. .../generator-int8-shared decoder

Each variant in a fresh process (page cache warm: the files are read once first), 3 runs:
  default      ORT_ENABLE_ALL, as colrag.vlm.runtime.create_session does
  saved-opt    load a model saved after ORT_ENABLE_EXTENDED optimization, with optimizations off
  no-prepack   session.disable_prepacking = 1
  basic        ORT_ENABLE_BASIC
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load(path: str, variant: str, opt_path: str | None) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if variant == "no-prepack":
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if variant == "basic":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if variant == "saved-opt":
        path = opt_path
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    t0 = time.perf_counter()
    ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    return time.perf_counter() - t0


def main() -> None:
    if sys.argv[1] == "--worker":
        print(json.dumps(load(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)))
        return
    bundle, graphs = Path(sys.argv[1]), sys.argv[2:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    for graph in graphs:
        path = bundle / manifest["graphs"][graph]
        with tempfile.TemporaryDirectory(dir=Path.home() / ".cache" / "colrag-bench") as tmp:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opt_path = str(Path(tmp) / "opt.onnx")
            opts.optimized_model_filepath = opt_path
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.onnx.data")
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            t0 = time.perf_counter()
            ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            print(f"{graph}: saving the optimized model took {time.perf_counter() - t0:.1f} s")
            for variant in ("default", "saved-opt", "no-prepack", "basic"):
                times = []
                for _ in range(3):
                    out = subprocess.run(
                        [sys.executable, __file__, "--worker", str(path), variant, opt_path],
                        capture_output=True,
                        text=True,
                    )
                    if out.returncode != 0:
                        times = None
                        print(f"  {variant}: failed: {out.stderr.strip().splitlines()[-1:]}")
                        break
                    times.append(float(out.stdout.strip().splitlines()[-1]))
                if times:
                    print(
                        f"  {variant:10s} median {statistics.median(times):.2f} s  "
                        f"(runs {', '.join(f'{t:.2f}' for t in times)})"
                    )


if __name__ == "__main__":
    main()
