"""Candidate-stage time and output of one colrag tree, on the 30,000-page clustered bench index (A/B two trees).

    python bench/experiments/candidate_stage_time.py /work/main; python bench/experiments/candidate_stage_time.py .

Prints the p50 of Searcher.candidates (one thread, 40 queries x 3) and a hash of the candidate
sets, so that two implementations can be compared for speed and identical output.
"""

import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/bench")
import bench_search as bs

from colrag.search import Searcher
from colrag.store import Index

gen = bs.Topics()
qs, _ = gen.queries(30000, 40)
with Index.open(bs.index_folder("clustered", 30000)) as ix:
    s = Searcher(ix, None, threads=1)
    for q in qs:
        s.candidates(q, 5)
    c = []
    for _ in range(3):
        for q in qs:
            t = time.perf_counter()
            s.candidates(q, 5)
            c.append(time.perf_counter() - t)
    out = [sorted(p.id for p in s.candidates(q, 5)) for q in qs]
digest = hashlib.md5(json.dumps(out).encode()).hexdigest()[:10]
print(
    f"{sys.argv[1]}: candidate stage p50 {1000 * np.median(c):.1f} ms, load {os.getloadavg()[0]:.1f}, "
    f"candidates hash {digest}"
)
