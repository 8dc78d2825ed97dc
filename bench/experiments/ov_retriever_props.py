"""Where a page's time goes on OpenVINO, and which CPU plugin properties move it (issue 16).

    # 1. one page through colrag (OpenVINO, as `auto` runs it), each step timed; the graphs' feeds saved
    python bench/experiments/ov_retriever_props.py record ~/.cache/colrag-bench/bundles/retriever-int8 --out /tmp/page
    # 2. one graph compiled with extra CPU properties, timed on the saved feeds, compared with a saved output
    python bench/experiments/ov_retriever_props.py graph ~/.cache/colrag-bench/bundles/retriever-int8 --out /tmp/page \
        --graph vision --set DYNAMIC_QUANTIZATION_GROUP_SIZE=0 [--profile] [--save-as NAME] [--runs 2]

`record` saves, under --out, the feeds of the vision and text graphs (`<graph>.feeds.npz`) and colrag's
outputs (`<graph>.auto.npy`). `graph` compiles the graph straight with OpenVINO (no cache) with colrag's
config (`backends.openvino_config`) plus --set KEY=VALUE, runs it once to warm up and --runs times, and
prints the time and the row cosine of its output against every saved `<graph>.*.npy`; --profile adds the
time per executed node type (PERF_COUNT) and --save-as keeps the output as `<graph>.NAME.npy`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench._util import PDF_DIR, machine, render_page
from colrag.compare import row_cosines
from colrag.vlm import backends


def record(args: argparse.Namespace) -> None:
    import colrag
    from colrag.vlm import retriever as rmod

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    image = render_page(Path(args.pdf), 1, int(manifest["max_pixels"]))
    t_render = time.perf_counter() - t0
    r = colrag.Retriever.load(args.bundle, backend=args.backend, precision=args.precision)
    steps: dict[str, list[float]] = defaultdict(list)
    saved: dict[str, Any] = {}

    class Timed:
        def __init__(self, name: str, session: Any):
            self.name, self.session = name, session
            self.backend, self.precision = session.backend, session.precision

        def run(self, feeds, outputs=None):
            saved[self.name] = {k: np.array(backends.as_numpy(v)) for k, v in feeds.items()}
            t = time.perf_counter()
            res = self.session.run(feeds, outputs)
            steps[f"{self.name} graph"].append(time.perf_counter() - t)
            saved[self.name + ".out"] = np.array(backends.as_numpy(res[0]))
            return res

    pre_fn = rmod.preprocess_image

    def timed_pre(*a, **k):
        t = time.perf_counter()
        res = pre_fn(*a, **k)
        steps["preprocess"].append(time.perf_counter() - t)
        return res

    rmod.preprocess_image = timed_pre  # type: ignore[assignment]
    r._vision = Timed("vision", r._vision)
    r._text = Timed("text", r._text)
    print(f"machine: {machine()}\nrender page 1 ({image.size[0]}x{image.size[1]}): {t_render:.2f} s")
    print(f"runtimes: vision {r._vision.backend} {r._vision.precision}, text {r._text.backend} {r._text.precision}")
    for i in range(args.runs + 1):
        steps.clear()
        t = time.perf_counter()
        r.embed_images([image])
        total = time.perf_counter() - t
        parts = {k: sum(v) for k, v in steps.items()}
        glue = total - sum(parts.values())
        label = "warm-up" if i == 0 else f"run {i}"
        print(
            f"{label}: total {total:.2f} s = "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
            + f", glue {glue:.2f}"
        )
    for name in ("vision", "text"):
        np.savez(out / f"{name}.feeds.npz", **saved[name])
        np.save(out / f"{name}.{args.save_as}.npy", saved[name + ".out"])
    print(f"saved under {out}")


def graph(args: argparse.Namespace) -> None:
    import openvino as ov

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    path = args.bundle / manifest["graphs"][args.graph]
    feeds = dict(np.load(args.out / f"{args.graph}.feeds.npz"))
    config = backends.openvino_config(args.precision, args.threads or None, None)
    for item in args.set:
        key, _, value = item.partition("=")
        config[key] = value
    if args.profile:
        config["PERF_COUNT"] = True
    core = ov.Core()
    t = time.perf_counter()
    compiled = core.compile_model(str(path), "CPU", config)
    compile_s = time.perf_counter() - t
    request = compiled.create_infer_request()
    times, cpu, result = [], [], None
    for i in range(args.runs + 1):
        t, c = time.perf_counter(), time.process_time()
        result = request.infer(feeds, share_inputs=True, share_outputs=False)[0]
        if i:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    assert result is not None
    flat = np.asarray(result, dtype=np.float32).reshape(-1, result.shape[-1])
    cos = []
    for ref in sorted(args.out.glob(f"{args.graph}.*.npy")):
        other = np.load(ref).reshape(-1, flat.shape[-1])
        c = row_cosines(flat, other)
        cos.append(f"{ref.stem.split('.', 1)[1]} {c.mean():.5f}/{c.min():.5f}")
    print(
        f"{args.graph} {' '.join(args.set) or '(colrag config)'} prec={args.precision}: "
        f"compile {compile_s:.1f} s, runs {' '.join(f'{x:.2f}' for x in times)} s "
        f"(cpu {' '.join(f'{x:.2f}' for x in cpu)} s); cosine mean/min vs {'; '.join(cos)}",
        flush=True,
    )
    if args.profile:
        by_type: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for node in request.profiling_info:
            key = f"{node.node_type} [{node.exec_type}]"
            by_type[key] += node.real_time.total_seconds()
            count[key] += 1
        total = sum(by_type.values())
        print(f"  profiled {total:.2f} s (last run)")
        for key, secs in sorted(by_type.items(), key=lambda kv: -kv[1])[:14]:
            print(f"  {secs:7.3f} s {100 * secs / total:5.1f} %  x{count[key]:<4d} {key}")
    if args.save_as:
        np.save(args.out / f"{args.graph}.{args.save_as}.npy", flat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["record", "graph"])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pdf", default=str(PDF_DIR / "03_chart_usda_ag_energy_roundup.pdf"))
    ap.add_argument("--graph", choices=["vision", "text"], default="vision")
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--save-as", default="")
    args = ap.parse_args()
    if args.what == "record":
        args.save_as = args.save_as or "auto"
        record(args)
    else:
        graph(args)


if __name__ == "__main__":
    main()
