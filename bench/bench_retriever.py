"""Page and query embedding: transformers ColQwen2ForRetrieval vs colrag, side by side.

    python bench/bench_retriever.py --checkpoint ~/.cache/colrag-bench/colqwen2-2b-random \
        --bundle ~/.cache/colrag-bench/bundles/retriever [--bundle NAME=DIR ...] [--runs 3]

Each variant runs in a fresh process: one warm-up, then --runs timed runs (median ± half
range), and the process's peak RSS. The page is page 1 of a real PDF from ../shared,
rendered to the retriever's pixel budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import machine, peak_rss_gb, render_page, run_worker, side_by_side_args, summary
from bench._util import variants as bench_variants
from colrag.compare import row_cosines

QUERY = "What share of energy use does the chart attribute to fertilizer production?"
MAX_PIXELS = 768 * 28 * 28


def worker(args) -> None:
    image = render_page(Path(args.pdf), args.page, MAX_PIXELS)
    page_t, query_t = [], []
    if args.worker == "torch":
        import torch
        from transformers import ColQwen2ForRetrieval, ColQwen2Processor

        torch.set_num_threads(args.threads or torch.get_num_threads())
        model = ColQwen2ForRetrieval.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
        proc = ColQwen2Processor.from_pretrained(args.checkpoint)

        def embed_page():
            b = proc.process_images(images=[image])
            ids = b["input_ids"]
            pos, _ = model.vlm.get_rope_index(
                input_ids=ids,
                mm_token_type_ids=(ids == 151655).int(),
                image_grid_thw=b["image_grid_thw"],
                attention_mask=b["attention_mask"],
            )
            with torch.no_grad():
                return model(**b, position_ids=pos).embeddings

        def embed_query():
            with torch.no_grad():
                return model(**proc.process_queries(text=[QUERY])).embeddings
    else:
        import colrag

        r = colrag.Retriever.load(
            args.bundle[-1], threads=args.threads or None, backend=args.backend, precision=args.precision
        )

        def embed_page():
            return r.embed_images([image])

        def embed_query():
            return r.embed_queries([QUERY])

    for i in range(args.runs + 1):
        t = time.perf_counter()
        page = embed_page()
        if i:
            page_t.append(time.perf_counter() - t)
    if args.save:  # the page's vectors, for the cosine against the first variant
        vectors = page[0].float().numpy() if args.worker == "torch" else page[0]
        if args.worker == "torch":  # drop padding rows, as colrag does
            vectors = vectors[proc.process_images(images=[image])["attention_mask"][0].bool().numpy()]
        np.save(args.save, np.asarray(vectors, dtype=np.float32))
    for i in range(args.runs + 1):
        t = time.perf_counter()
        embed_query()
        if i:
            query_t.append(time.perf_counter() - t)
    print(json.dumps({"page": page_t, "query": query_t, "peak_gb": peak_rss_gb(), "image": list(image.size)}))


def main() -> None:
    ap = side_by_side_args(__doc__, runs=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    common = [
        "--checkpoint",
        args.checkpoint,
        "--pdf",
        args.pdf,
        "--page",
        str(args.page),
        "--runs",
        str(args.runs),
        "--threads",
        str(args.threads),
    ]
    variants = bench_variants(args, "fp32")
    print(f"machine: {machine()}")
    print(f"page: {Path(args.pdf).name} p{args.page}; runs: {args.runs} (median ± half range, after 1 warm-up)\n")
    print(
        "| variant | page embedding (s) | query embedding (s) | peak RSS (GB) | page cosine vs the first row "
        "(mean / min) |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        first = None
        for i, (name, extra) in enumerate(variants):
            saved = Path(tmp) / f"{i}.npy"
            res = run_worker(Path(__file__), [*common, *extra, "--save", str(saved)])
            if "error" in res:
                print(f"| {name} | failed: {res['error']} | | | |")
                continue
            vectors = np.load(saved)
            first = vectors if first is None else first
            cos = row_cosines(vectors, first) if vectors.shape == first.shape else None
            drift = (
                f"{cos.mean():.5f} / {cos.min():.5f}" if cos is not None else f"shapes {vectors.shape} / {first.shape}"
            )
            print(
                f"| {name} | {summary(res['page'])} | {summary(res['query'])} | {res['peak_gb']:.1f} | {drift} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
