"""Adding one page to an existing index through the Python API: open, add_page + commit, close.

    python bench/experiments/add_one_page.py INDEX_FOLDER [PAGE_NO]

Writes one random 783-token page of a file "/extra/one.pdf" into the index (use a copy of
a bench index), prints the three wall times and a cProfile of add_page + commit, so what
grows with the index shows up (INDEX_FORMAT.md, "Adding one page to a large index").
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import colrag


def main() -> int:
    folder = sys.argv[1]
    page_no = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    x = np.random.default_rng(5).standard_normal((783, 128)).astype(np.float32)
    t0 = time.perf_counter()
    ix = colrag.open_index(folder, create=False)
    t1 = time.perf_counter()
    profile = cProfile.Profile()
    profile.enable()
    ix.add_page("/extra/one.pdf", page_no, x)
    ix.commit()
    profile.disable()
    t2 = time.perf_counter()
    ix.close()
    t3 = time.perf_counter()
    print(f"open {t1 - t0:.3f} s, add_page + commit {t2 - t1:.3f} s, close {t3 - t2:.3f} s")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(18)
    return 0


if __name__ == "__main__":
    sys.exit(main())
