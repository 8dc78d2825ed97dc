"""Ray overhead: the same documents indexed in this process and through a local Ray cluster.

    python bench/bench_ray.py --retriever DIR [--pdfs ../shared/data/pdfs] [--workers 2] [--threads 1]
        [--index local|qdrant]

Both runs index into a fresh index (a local folder, or a Qdrant Edge shard with --index qdrant)
with the same retriever bundle and thread count, page features on when the bundle names its
vision tower. The Ray run's time is split into starting Ray + its workers (each loads the
retriever once) and indexing. Reported: seconds, pages/s, per-page overhead of the Ray run,
and whether the two indexes hold the same pages, the same stored vectors and the same page
features (bytes compared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from colrag.indexer import Indexer  # noqa: E402
from colrag.ray_pages import RayPages  # noqa: E402
from colrag.store import Index, RetrieverInfo  # noqa: E402
from colrag.store import features as pf  # noqa: E402
from colrag.vlm.retriever import Retriever  # noqa: E402


def open_writer(kind: str, where: Path, info: RetrieverInfo):
    if kind == "qdrant":
        from colrag.store.qdrant.catalog import open_catalog

        return open_catalog(f"qdrant+edge:{where}", info)
    return Index.open_writer(where, info)


def same_index(kind: str, a_dir: Path, b_dir: Path) -> bool:
    if kind == "qdrant":
        from colrag.store.qdrant.catalog import open_catalog

        with (
            open_catalog(f"qdrant+edge:{a_dir}", None, create=False) as a,
            open_catalog(f"qdrant+edge:{b_dir}", None, create=False) as b,
        ):
            pages = sorted(a.ix.pages())
            return pages == sorted(b.ix.pages()) and all(
                a.ix.page_vectors(f, p).tobytes() == b.ix.page_vectors(f, p).tobytes()
                and a.read_features(f, p).embeds.tobytes() == b.read_features(f, p).embeds.tobytes()
                for f, p in pages
            )
    with Index.open(a_dir) as a, Index.open(b_dir) as b:
        sa, sb = a.snapshot(), b.snapshot()
        if [(p.path, p.page_no, p.n_tokens) for p in sa.pages] != [(p.path, p.page_no, p.n_tokens) for p in sb.pages]:
            return False
        for pa, pb in zip(sa.pages, sb.pages, strict=True):
            if a.page_codes(sa, pa).tobytes() != b.page_codes(sb, pb).tobytes():
                return False
            if pf.manifest_info(a.manifest) is not None:
                fa, fb = pf.read_hit(a, sa, pa.path, pa.page_no), pf.read_hit(b, sb, pb.path, pb.page_no)
                if fa.embeds.tobytes() != fb.embeds.tobytes():
                    return False
        return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--retriever", type=Path, required=True)
    ap.add_argument("--pdfs", type=Path, default=ROOT.parent / "shared" / "data" / "pdfs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads of each Ray worker")
    ap.add_argument("--single-threads", type=int, default=None, help="threads of the single-process run [--threads]")
    ap.add_argument("--index", choices=["local", "qdrant"], default="local")
    args = ap.parse_args()
    model = Retriever.load(args.retriever, threads=args.single_threads or args.threads)
    info = RetrieverInfo.of(model)
    out: dict = {"pdfs": str(args.pdfs), "index": args.index, "workers": args.workers, "threads": args.threads}
    out["single_threads"] = args.single_threads or args.threads
    out["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        with open_writer(args.index, Path(tmp) / "single", info) as ix:
            single = Indexer(ix, model).run([args.pdfs])
        out["single_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        with RayPages(args.retriever, workers=args.workers, threads=args.threads) as pool:
            list(pool.run(next(args.pdfs.glob("*.pdf")), [1] * args.workers))  # every worker loaded its retriever
            out["ray_start_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            with open_writer(args.index, Path(tmp) / "ray", info) as ix:
                fanned = Indexer(ix, model, pages_source=pool).run([args.pdfs])
            out["ray_index_s"] = round(time.perf_counter() - t, 2)
        out["pages"] = single.pages
        out["failures"] = [len(single.failures), len(fanned.failures)]
        out["single_pages_per_s"] = round(single.pages / out["single_s"], 3)
        out["ray_pages_per_s"] = round(fanned.pages / out["ray_index_s"], 3)
        out["ray_overhead_per_page_s"] = round((out["ray_index_s"] - out["single_s"]) / max(1, single.pages), 3)
        out["same_index"] = same_index(args.index, Path(tmp) / "single", Path(tmp) / "ray")
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
