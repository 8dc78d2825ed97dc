"""Test helpers for indexing: a deterministic fake retriever and PDF builders.

The fake has the Retriever API (embed_images, embed_queries, dim, max_pixels,
bundle_id, name) and is cheap: a page becomes a grid of cells, each cell's
downsampled pixels projected by a seeded random matrix onto the unit sphere.

`python -m tests.index_helpers INDEX PATH... [--slow S] [--codebook-rows N] [--render MODE]` indexes
with the fake, printing one line per page on stdout (the crash tests kill it mid-run);
--codebook-rows lowers the size at which the index trains its centroids; --render MODE renders
with `python -m tests.render_workers MODE` (e.g. hang:2).
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np

SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"


class FakeRetriever:
    dim = 128
    max_pixels = 768 * 28 * 28
    name = "fake-retriever"

    def __init__(self, seed: int = 0, slow: float = 0.0):
        self.seed = seed
        self.slow = slow
        self.bundle_id = f"fake-{seed}"
        rng = np.random.default_rng(seed)
        self._proj = rng.standard_normal((8 * 8 + 2, self.dim)).astype(np.float32)  # cell pixels + position -> dim
        self.calls = 0

    def embed_images(self, images) -> list[np.ndarray]:
        out = []
        for image in images:
            if self.slow:
                time.sleep(self.slow)
            self.calls += 1
            w, h = image.size
            gw = max(2, min(8, round(np.sqrt(24 * w / h))))
            gh = max(2, min(8, round(24 / gw)))
            small = np.asarray(image.convert("L").resize((gw * 8, gh * 8)), dtype=np.float32) / 255.0  # (gh*8, gw*8)
            cells = small.reshape(gh, 8, gw, 8).transpose(0, 2, 1, 3).reshape(gh * gw, 64)  # (n_tokens, 64)
            ys, xs = np.divmod(np.arange(gh * gw), gw)
            feats = np.concatenate([cells - cells.mean(), np.stack([ys / gh, xs / gw], 1)], 1)  # (n_tokens, 66)
            out.append(_unit(feats @ self._proj))
        return out

    def embed_queries(self, texts) -> list[np.ndarray]:
        out = []
        for text in texts:
            words = ["Query:", *text.split()] + ["<pad>"] * 4
            vecs = [
                np.random.default_rng(
                    int.from_bytes(hashlib.sha256(f"{self.seed}/{w}".encode()).digest()[:8], "little")
                ).standard_normal(self.dim)
                for w in words
            ]
            out.append(_unit(np.stack(vecs).astype(np.float32)))
        return out


def clustered_rows(n: int, seed: int, n_dirs: int = 64, noise: float = 0.08, dim: int = 128) -> np.ndarray:
    """(n, dim) unit rows around a few of `n_dirs` shared directions (fixed by dim), like a page's tokens."""
    dirs = _unit(np.random.default_rng(12345).standard_normal((n_dirs, dim)))
    rng = np.random.default_rng(seed)
    mine = rng.choice(n_dirs, size=min(n_dirs, 6), replace=False)
    return _unit(dirs[rng.choice(mine, size=n)] + noise * rng.standard_normal((n, dim)).astype(np.float32))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def make_pdf(path: Path, n_pages: int = 3, tag: str = "doc", size=(612, 792)) -> Path:
    """A PDF whose pages differ visibly: text, a coloured box at a page-dependent place."""
    import pymupdf

    doc = pymupdf.open()
    for i in range(n_pages):
        page = doc.new_page(width=size[0], height=size[1])
        seed = int.from_bytes(hashlib.sha256(f"{tag}/{i}".encode()).digest()[:4], "little")
        rng = np.random.default_rng(seed)
        for _ in range(4):
            x0, y0 = rng.uniform(0, 0.7) * size[0], rng.uniform(0, 0.7) * size[1]
            rect = pymupdf.Rect(x0, y0, x0 + rng.uniform(0.1, 0.3) * size[0], y0 + rng.uniform(0.1, 0.3) * size[1])
            page.draw_rect(rect, color=None, fill=tuple(rng.uniform(0, 1, 3)))
        page.insert_text((40, 60), f"{tag} page {i + 1}", fontsize=min(24, size[1] / 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


class LineProgress:
    """Prints 'page N label' per page, flushed (the crash test reads it)."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.n = 0

    def start(self, total_pages: int, files: int) -> None:
        print(f"total {total_pages}", file=self.stream, flush=True)

    def advance(self, pages: int, label: str) -> None:
        self.n += pages
        print(f"page {self.n} {label}", file=self.stream, flush=True)

    def finish(self) -> None:
        print("finished", file=self.stream, flush=True)


def main(argv: list[str]) -> int:
    from colrag.indexer import Indexer
    from colrag.store import Index, RetrieverInfo, coarse

    slow = 0.0
    if "--slow" in argv:
        i = argv.index("--slow")
        slow = float(argv[i + 1])
        del argv[i : i + 2]
    if "--codebook-rows" in argv:
        i = argv.index("--codebook-rows")
        coarse.MIN_ROWS = int(argv[i + 1])
        del argv[i : i + 2]
    render_command = None
    if "--render" in argv:
        i = argv.index("--render")
        render_command = [sys.executable, "-m", "tests.render_workers", argv[i + 1]]
        del argv[i : i + 2]
    index_path, *paths = argv
    retriever = FakeRetriever(slow=slow)
    with Index.open_writer(index_path, RetrieverInfo.of(retriever)) as index:
        indexer = Indexer(index, retriever, progress=LineProgress(), commit_pages=1, render_command=render_command)
        report = indexer.run(paths)
    print(f"done pages={report.pages} failures={len(report.failures)}", flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
