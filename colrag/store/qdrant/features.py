"""Page features of a Qdrant Edge index: each page's vision-tower output, in a folder beside the
shard, so that `colrag ask` on an indexed page runs neither the renderer nor the vision tower.

    <edge folder>/features/<point id>.feat    one file per page (the page's point id: uuid5 of file, page)

A file is `MAGIC`, a 4-byte little-endian header length, a JSON header
{"version", "file", "page", "sha256", "vision_hash", "hidden", "encoding", "grid", "n_rows", "crc32"}
and the (n_rows, hidden) rows in the encoding of colrag.store.features (float16 by default).
Written atomically (temp + fsync + rename) *before* the page's point is committed.

Why not in Qdrant: a page's features are ~2.4 MB at float16 (768 merged image tokens x 1536
for Qwen2-VL-2B), ~12x its token vectors. As payload they would be JSON (base64: 3.1 MB a
page, or a float list of ~10 MB through qdrant-client's REST), loaded with every payload
read; a server's default request limit (32 MB) would hold a handful of pages per upsert. As an
extra multivector they would be scored by nothing and still be copied on every optimizer
pass. Measured: docs/SCALE.md. Features are a cache, not index truth: a missing, stale or
damaged file only means `ask` computes them (render + vision tower), so a folder that is
not in one transaction with the shard is safe: the header names the document's sha256
and vision tower, and the reader checks both and the crc32 before using the rows.

A Qdrant *server* index keeps no page features (they would have to live on one machine, or
travel as payload); `ask` on it computes them.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ...fsutil import atomic_write_bytes
from ...vlm.image_features import ImageFeatures
from .. import features as pf
from .schema import point_id

FEATURES_DIR = "features"
MAGIC = b"COLRAGPF"
VERSION = 1
SUFFIX = ".feat"


class EdgeFeatures:
    """The features folder of one Edge index; `info` is the manifest's page_features entry."""

    def __init__(self, folder: Path, info: dict[str, Any]):
        self.root = folder / FEATURES_DIR
        self.hidden = int(info["hidden_size"])
        self.encoding = str(info["encoding"])
        self.vision_hash = str(info["vision_hash"])

    def _path(self, file: str, page: int) -> Path:
        return self.root / f"{point_id(file, page)}{SUFFIX}"

    def write(self, file: str, page: int, sha256: str, feats: ImageFeatures) -> None:
        """Store one page's features (atomically); replaces what the page had."""
        feats.check(self.hidden)
        data = pf.encode(feats.embeds, self.encoding)
        t, h, w = (int(v) for v in np.asarray(feats.grid_thw).reshape(3))
        header = {
            "version": VERSION,
            "file": file,
            "page": int(page),
            "sha256": sha256,
            "vision_hash": self.vision_hash,
            "hidden": self.hidden,
            "encoding": self.encoding,
            "grid": [t, h, w],
            "n_rows": feats.n_tokens,
            "crc32": zlib.crc32(data),
        }
        head = json.dumps(header, sort_keys=True).encode()
        self.root.mkdir(exist_ok=True)
        atomic_write_bytes(self._path(file, page), MAGIC + len(head).to_bytes(4, "little") + head + data)

    def read(self, file: str, page: int, sha256: str | None) -> ImageFeatures:
        """The page's features, checked; FeaturesUnavailable when missing, stale or damaged."""
        path = self._path(file, page)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise pf.FeaturesUnavailable("the page has no stored features") from None
        except OSError as exc:
            raise pf.FeaturesUnavailable(f"{FEATURES_DIR}/{path.name} cannot be read: {exc.strerror or exc}") from None
        where = f"{FEATURES_DIR}/{path.name}"
        if raw[: len(MAGIC)] != MAGIC or len(raw) < len(MAGIC) + 4:
            raise pf.FeaturesUnavailable(f"{where} is not a colrag page-features file")
        n_head = int.from_bytes(raw[len(MAGIC) : len(MAGIC) + 4], "little")
        start = len(MAGIC) + 4 + n_head
        try:
            header = json.loads(raw[len(MAGIC) + 4 : start])
            grid = [int(v) for v in header["grid"]]
            n_rows = int(header["n_rows"])
            ok = (
                header["version"] == VERSION
                and header["file"] == file
                and header["page"] == page
                and header["hidden"] == self.hidden
                and header["encoding"] == self.encoding
                and len(grid) == 3
            )
        except (ValueError, KeyError, TypeError):
            raise pf.FeaturesUnavailable(f"{where} has a damaged header") from None
        if not ok:
            raise pf.FeaturesUnavailable(f"{where} is not this page's features")
        if header["vision_hash"] != self.vision_hash or (sha256 is not None and header["sha256"] != sha256):
            raise pf.FeaturesUnavailable(f"{where} is stale (another version of the file, or another vision tower)")
        data = raw[start:]
        if len(data) != n_rows * pf.row_bytes(self.encoding, self.hidden):
            raise pf.FeaturesUnavailable(f"{where} is truncated")
        if zlib.crc32(data) != header["crc32"]:
            raise pf.FeaturesUnavailable(f"{where} is corrupt (checksum mismatch)")
        feats = ImageFeatures(
            pf.decode(data, n_rows, self.hidden, self.encoding), np.array(grid, dtype=np.int64), self.vision_hash
        )
        try:
            feats.check(self.hidden)
        except ValueError as exc:
            raise pf.FeaturesUnavailable(f"{where}: {exc}") from None
        return feats

    def remove(self, file: str, pages: list[int]) -> None:
        for page in pages:
            self._path(file, page).unlink(missing_ok=True)

    def sweep(self, keep: set[str]) -> int:
        """Delete the files of pages no longer in the index (point ids not in `keep`); returns how many."""
        gone = 0
        if not self.root.is_dir():
            return gone
        for path in self.root.iterdir():
            if path.suffix == SUFFIX and path.stem not in keep:
                path.unlink(missing_ok=True)
                gone += 1
            elif path.name.endswith(".tmp"):  # an interrupted atomic write
                path.unlink(missing_ok=True)
        return gone

    def stats(self) -> dict[str, int]:
        files = [p for p in self.root.iterdir() if p.suffix == SUFFIX] if self.root.is_dir() else []
        size = sum(p.stat().st_size for p in files)
        return {"pages_with_features": len(files), "feature_bytes": size}


def edge_features(folder: Path | None, manifest: dict[str, Any] | None) -> EdgeFeatures | None:
    """The features folder of an Edge index whose manifest names page features; None otherwise."""
    if folder is None or manifest is None:
        return None
    info = pf.manifest_info(manifest)
    return EdgeFeatures(folder, info) if info is not None else None
