"""Pages in Qdrant: the page-index API (add_page / commit / search / remove_file / close) on
Qdrant's engine, embedded (`qdrant+edge:PATH`, the `qdrant-edge-py` package) or on a server
or cluster (`qdrant:http://HOST:6333/COLLECTION`, the `qdrant-client` package).

Install with `pip install 'colrag[qdrant]'`. Nothing here imports qdrant until an index is opened.

Modules: schema (spec syntax, ids, constants, pooling, manifest check, the Edge folder's lock),
index (QdrantIndex: add_page / commit / search; open_qdrant; copy_local_index), edge and
server (the two engines).

One Qdrant point per page, id uuid5(file, page) (so re-adding a page overwrites it: a resumed
run never duplicates), with
    vector "tokens":  the page's token vectors, a multivector compared by MaxSim, stored as
                      float16, HNSW off (m=0: a graph over every token vector is what Qdrant's
                      docs advise against; it ran for minutes at 200 pages here)
    vector "pooled":  POOLED_VECTORS k-means centroids of the page's tokens (pool_tokens), a
                      multivector compared by MaxSim, float16, with an HNSW graph over pages:
                      the candidate stage (Qdrant's documented pattern for ColPali-style pages)
    payload:          {"file", "page", "n_tokens"} (a keyword index on "file")
and one vector-less point (MANIFEST_ID) holding the index's manifest (format, dim, retriever).

Search: up to EXACT_ALL_PAGES pages, Qdrant's exact MaxSim over every page's float16 vectors,
i.e. brute force (Qdrant rounds the query to float16 too and sums in float32). Larger: the
`candidates` pages found by HNSW on the pooled multivectors are prefetched and ranked by
Qdrant's MaxSim over their float16 token vectors; every returned score is that MaxSim.
Binary quantization was measured and left out: on Qdrant Edge 0.9 it made multivector
MaxSim slower, not faster (docs/SCALE.md). Measured recall and latency: docs/SCALE.md.

Where the catalog lives: in the points' payload, not in a local SQLite file. A Qdrant server
is shared by several indexing machines and readers; a catalog on one machine would diverge,
and keeping a SQLite file and a remote collection in step would need a two-phase commit.
With the payload, a page and its catalog facts are one point written by one operation.

Durability: `commit()` sends the buffered pages (one upsert per COMMIT_BATCH pages) and, on
Edge, calls EdgeShard.flush(). Qdrant writes every update to its write-ahead log before
applying it and replays the log when the shard is loaded, so a process killed at any moment
leaves an openable shard holding every committed page; pages not yet committed are lost and
are re-added by the resumed run (same ids). An Edge shard is opened by one process at a
time (Qdrant locks its WAL); a server takes concurrent writers and readers.
"""

from __future__ import annotations

from .index import QdrantIndex, copy_local_index, open_qdrant
from .schema import (
    CANDIDATES,
    COMMIT_BATCH,
    EDGE_MARKER,
    EDGE_PREFIX,
    EDGE_SHARD_DIR,
    EXACT_ALL_PAGES,
    FORMAT,
    HNSW_M,
    MANIFEST_ID,
    POOLED,
    POOLED_VECTORS,
    SCHEMA_VERSION,
    SERVER_PREFIX,
    TOKENS,
    PageIndex,
    check_manifest,
    is_qdrant_spec,
    parse_spec,
    point_id,
    pool_tokens,
)

__all__ = [
    "CANDIDATES",
    "COMMIT_BATCH",
    "EDGE_MARKER",
    "EDGE_PREFIX",
    "EDGE_SHARD_DIR",
    "EXACT_ALL_PAGES",
    "FORMAT",
    "HNSW_M",
    "MANIFEST_ID",
    "POOLED",
    "POOLED_VECTORS",
    "SCHEMA_VERSION",
    "SERVER_PREFIX",
    "TOKENS",
    "PageIndex",
    "QdrantIndex",
    "check_manifest",
    "copy_local_index",
    "is_qdrant_spec",
    "open_qdrant",
    "parse_spec",
    "point_id",
    "pool_tokens",
]
