"""Each graph of a bundle on each backend, with the inputs of one real page: what `auto` is chosen by.

    python bench/bench_graphs.py ~/.cache/colrag-bench/bundles/retriever-int8 [--graphs vision text] [--runs 2]
    python bench/bench_graphs.py ~/.cache/colrag-bench/bundles/generator-int8 --graphs vision prefill decode

The inputs are recorded from a colrag run on onnxruntime (page 1 of a real PDF at the bundle's
pixel budget); then every graph is loaded alone on onnxruntime, OpenVINO f32 and OpenVINO
bf16 (where the CPU has it), run once to warm up and --runs times, and its output compared
with onnxruntime's (row cosine; for the decoder also the top-1 token). `decode` is one step
with the page's whole prompt (≈ 780-1,300 tokens) as the past, its k/v passed in and out as
colrag does.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import PDF_DIR, machine, render_page, summary
from colrag.compare import row_cosines
from colrag.vlm import backends


class Recorder:
    """Wraps a session; keeps a copy of every feed it is given."""

    def __init__(self, session):
        self.session, self.calls = session, []

    def run(self, feeds, outputs=None):
        self.calls.append(({k: np.array(backends.as_numpy(v)) for k, v in feeds.items()}, outputs))
        return self.session.run(feeds, outputs)


def record(bundle: Path, kind: str, image) -> dict:
    """graph name -> (graph file, feeds, output names)"""
    import colrag

    if kind == "retriever":
        r = colrag.Retriever.load(bundle, backend="onnxruntime")
        r._vision, r._text = Recorder(r._vision), Recorder(r._text)
        r.embed_images([image])
        files = {"vision": bundle / r.manifest["graphs"]["vision"], "text": bundle / r.manifest["graphs"]["text"]}
        return {"vision": (files["vision"], *r._vision.calls[0]), "text": (files["text"], *r._text.calls[0])}
    g = colrag.Generator.load(bundle, backend="onnxruntime", prefix_cache=False)
    g._vision, g._decoder = Recorder(g._vision), Recorder(g._decoder)
    g._prefill = g._decoder  # one onnxruntime session serves both
    g.generate("What does the chart show?", [image], max_new_tokens=2, min_new_tokens=2)
    vision = type(g).vision_graph(bundle, g.manifest)
    decoder = bundle / g.manifest["graphs"]["decoder"]
    return {
        "vision": (vision, *g._vision.calls[0]),
        "prefill": (decoder, *g._decoder.calls[0]),
        "decode": (decoder, *g._decoder.calls[1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--graphs", nargs="+")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--pdf", default=str(PDF_DIR / "03_chart_usda_ag_energy_roundup.pdf"))
    args = ap.parse_args()
    import json

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    kind = manifest["kind"]
    image = render_page(Path(args.pdf), 1, int(manifest["max_pixels"]))
    recorded = record(args.bundle, kind, image)
    gc.collect()
    print(
        f"machine: {machine()}\nbundle: {args.bundle}; "
        f"page 1 of {Path(args.pdf).name}, {image.size[0]}x{image.size[1]}\n"
    )
    print("| graph | input | backend | precision | time (s) | cosine vs onnxruntime (min) | top-1 equal |")
    print("|---|---|---|---|---|---|---|")
    runtimes = [("onnxruntime", "f32"), ("openvino", "f32")] + (
        [("openvino", "bf16")] if backends.cpu_has_bf16() else []
    )
    for graph, (path, feeds, outputs) in recorded.items():
        if args.graphs and graph not in args.graphs:
            continue
        shape = "x".join(str(d) for d in next(iter(feeds.values())).shape)
        if graph == "decode":
            shape = f"past {feeds['attention_mask'].shape[1] - 1}"
        reference = None
        for backend, precision in runtimes:
            session = backends.open_session(path, graph=graph, backend=backend, precision=precision)
            times, out = [], None
            for i in range(args.runs + 1):
                t = time.perf_counter()
                out = backends.as_numpy(session.run(feeds, outputs)[0])
                if i:
                    times.append(time.perf_counter() - t)
            del session
            gc.collect()
            flat = out.reshape(-1, out.shape[-1])
            reference = flat if reference is None else reference
            cos = row_cosines(flat, reference).min()
            top1 = f"{(flat.argmax(-1) == reference.argmax(-1)).mean():.2f}" if graph in ("prefill", "decode") else ""
            print(
                f"| {graph} | {shape} | {backend} | {precision} | {summary(times, 3)} | {cos:.5f} | {top1} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
