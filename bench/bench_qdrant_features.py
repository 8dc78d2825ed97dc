"""Where a Qdrant index keeps page features: files beside the Edge shard vs Qdrant payload.

    python bench/bench_qdrant_features.py [--pages 20] [--rows 768] [--hidden 1536]

A page's features are (rows, hidden) float16: 768 x 1536 x 2 = 2.36 MB for a full page of
Qwen2-VL-2B. Measured, per page, on a fresh Qdrant Edge shard holding only these points:
  file     colrag.store.qdrant.features.EdgeFeatures (one atomically written file per page)
  payload  the same float16 bytes, base64, in the point's payload (what a server would need)
write (store + flush), read one page back (decoded), bytes on disk, and the request body a
qdrant-client REST upsert would send (JSON) for the payload variant.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from colrag.store.qdrant.features import EdgeFeatures  # noqa: E402
from colrag.vlm.image_features import ImageFeatures  # noqa: E402


def disk(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--rows", type=int, default=768)
    ap.add_argument("--hidden", type=int, default=1536)
    args = ap.parse_args()
    import qdrant_edge as qe

    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((args.rows, args.hidden)).astype(np.float32) for _ in range(args.pages)]
    grid = np.array([1, 2 * 32, 2 * args.rows // 32])  # rows = t*h*w/4
    out: dict = {"pages": args.pages, "rows": args.rows, "hidden": args.hidden, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeFeatures(
            Path(tmp) / "files", {"vision_hash": "v", "hidden_size": args.hidden, "encoding": "float16"}
        )
        (Path(tmp) / "files").mkdir()
        t = time.perf_counter()
        for i, f in enumerate(feats):
            store.write("/d/a.pdf", i + 1, "sha", ImageFeatures(f, grid, "v"))
        w = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(args.pages):
            store.read("/d/a.pdf", i + 1, "sha")
        r = time.perf_counter() - t
        out["file"] = {
            "write_ms_per_page": round(1000 * w / args.pages, 1),
            "read_ms_per_page": round(1000 * r / args.pages, 1),
            "disk_kb_per_page": round(disk(Path(tmp) / "files") / args.pages / 1000, 1),
        }

        tokens = qe.EdgeVectorParams(size=128, distance=qe.Distance.Dot)  # unused: Edge needs one vector config
        shard = qe.EdgeShard.create(str(Path(tmp) / "shard"), qe.EdgeConfig(vectors={"tokens": tokens}))
        ids = [str(uuid.uuid4()) for _ in feats]
        bodies = [base64.b64encode(f.astype("<f2").tobytes()).decode() for f in feats]
        t = time.perf_counter()
        for pid, body in zip(ids, bodies, strict=True):
            shard.update(qe.UpdateOperation.upsert_points([qe.Point(pid, {}, {"features": body})]))
        shard.flush()
        w = time.perf_counter() - t
        t = time.perf_counter()
        for pid in ids:
            (rec,) = shard.retrieve([pid], with_payload=True, with_vector=False)
            np.frombuffer(base64.b64decode(rec.payload["features"]), dtype="<f2").astype(np.float32)
        r = time.perf_counter() - t
        shard.close()
        request = json.dumps({"points": [{"id": ids[0], "vector": {}, "payload": {"features": bodies[0]}}]})
        as_floats = json.dumps(feats[0].astype(np.float16).astype(float).tolist())
        out["payload"] = {
            "write_ms_per_page": round(1000 * w / args.pages, 1),
            "read_ms_per_page": round(1000 * r / args.pages, 1),
            "disk_kb_per_page": round(disk(Path(tmp) / "shard") / args.pages / 1000, 1),
            "rest_request_mb_per_page_base64": round(len(request) / 1e6, 2),
            "rest_request_mb_per_page_float_list": round(len(as_floats) / 1e6, 2),
        }
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
