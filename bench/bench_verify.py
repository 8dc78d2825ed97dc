"""What the bundle content check costs: the first load (sha256 of every file) vs later loads (stamps).

    python bench/bench_verify.py [--gb 4] [--runs 3] [--bundle DIR ...]

Without --bundle it writes a synthetic bundle of --gb gigabytes (one weights file plus a
manifest) in a temp folder and times `verify_with_stamps` with no stamp (first load) and
with the stamp it leaves (every later load). With --bundle it times real bundles the same
way (their stamps go to a temp COLRAG_HOME, so yours are not touched). The files are in
the page cache when timed (just written or read): a cold first load from disk is bounded
by the disk's read speed instead, whichever is slower. CPU time (this process's) is
reported next to wall time: on a loaded machine the wall time mostly measures the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _synthetic_bundle(folder: Path, gb: float) -> Path:
    from colrag.vlm.bundle import write_manifest

    bundle = folder / "bundle"
    bundle.mkdir()
    block = os.urandom(64 << 20)
    with open(bundle / "weights.onnx.data", "wb") as f:
        for _ in range(max(1, round(gb * 1e9 / len(block)))):
            f.write(block)
    write_manifest(bundle, "retriever", {})
    return bundle


def _time(bundle: Path, runs: int) -> tuple[float, float, float, int]:
    import json

    from colrag.vlm.bundle import MANIFEST
    from colrag.vlm.verified import _stamp_path, verify_with_stamps

    manifest = json.loads((bundle / MANIFEST).read_text())
    size = sum(int(f["size"]) for f in manifest["files"].values())
    first, first_cpu, later = [], [], []
    for _ in range(runs):
        _stamp_path(bundle).unlink(missing_ok=True)
        t, c = time.perf_counter(), time.process_time()
        verify_with_stamps(bundle, manifest)
        first.append(time.perf_counter() - t)
        first_cpu.append(time.process_time() - c)
        t = time.perf_counter()
        verify_with_stamps(bundle, manifest)
        later.append(time.perf_counter() - t)
    return statistics.median(first), statistics.median(first_cpu), statistics.median(later), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bundle", type=Path, action="append")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="colrag-bench-verify-") as tmp:
        os.environ["COLRAG_HOME"] = str(Path(tmp) / "home")
        bundles = args.bundle or [_synthetic_bundle(Path(tmp), args.gb)]
        print(f"load average {os.getloadavg()[0]:.2f}; median of {args.runs} runs")
        print(
            "| bundle | bytes | first load (sha256), wall | GB/s wall | CPU time | GB/s per CPU-second | later "
            "loads (stamps) |"
        )
        print("|---|---|---|---|---|---|---|")
        for bundle in bundles:
            first, cpu, later, size = _time(bundle, args.runs)
            name = bundle.name if args.bundle else f"synthetic {size / 1e9:.1f} GB"
            print(
                f"| {name} | {size / 1e9:.2f} GB | {first:.2f} s | {size / 1e9 / first:.2f} | {cpu:.2f} s "
                f"| {size / 1e9 / cpu:.2f} | {later * 1e3:.1f} ms |"
            )


if __name__ == "__main__":
    main()
