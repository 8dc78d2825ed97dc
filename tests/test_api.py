"""colrag.open_index: the Python API over the index (no model), its README snippet, and the CLI's
one sentence on an index without a retriever."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import colrag
from colrag.errors import IndexStoreError, InputError
from colrag.scoring import maxsim

ROOT = Path(__file__).resolve().parents[1]


def pages(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((40 + i, 64)).astype(np.float32) for i in range(n)]


def test_add_commit_search_remove(tmp_path):
    ix = colrag.open_index(tmp_path / "ix", create=True)  # dim from the first page
    vecs = pages(6, 0)
    for i, v in enumerate(vecs):
        ix.add_page("a.pdf" if i < 4 else "b.pdf", i % 4 + 1, v)
    # nothing visible before commit
    with (
        colrag.open_index(tmp_path / "ix", readonly=True) as reader,
        pytest.raises(IndexStoreError, match="no pages"),
    ):
        reader.search(vecs[0][:5])
    ix.commit()
    assert ix.dim == 64
    q = vecs[2][:7] + 0.01
    hits = ix.search(q, k=3)
    assert isinstance(hits[0], colrag.Hit) and (hits[0].file, hits[0].page) == ("a.pdf", 3)
    snap = ix.index.snapshot()
    exact = maxsim([q], [ix.index.page_vectors(snap, p) for p in snap.pages])[0]  # over the stored (decoded) vectors
    assert [h.score for h in hits] == pytest.approx(sorted(exact.tolist(), reverse=True)[:3], rel=1e-6)
    ix.add_page("a.pdf", 3, vecs[5])  # replaces page 3 of a.pdf
    ix.remove_file("b.pdf")
    ix.commit()
    found = {(h.file, h.page) for h in ix.search(q, k=10)}
    assert found == {("a.pdf", 1), ("a.pdf", 2), ("a.pdf", 3), ("a.pdf", 4)}
    assert ix.search(vecs[5][:5], k=1)[0].page == 3
    with pytest.raises(InputError):
        ix.add_page("a.pdf", 1, np.zeros((3, 32), np.float32))
    with pytest.raises(InputError):
        ix.add_page("a.pdf", 0, vecs[0])
    ix.close()
    with colrag.open_index(tmp_path / "ix", readonly=True) as reader:
        assert len(reader.search(q, k=10)) == 4
        with pytest.raises(IndexStoreError, match="read-only"):
            reader.add_page("c.pdf", 1, vecs[0])
    with pytest.raises(IndexStoreError, match="no index"):
        colrag.open_index(tmp_path / "nothing", create=False)


def test_uncommitted_pages_are_dropped_by_close(tmp_path):
    with colrag.open_index(tmp_path / "ix", dim=64) as ix:
        ix.add_page("a.pdf", 1, pages(1, 0)[0])
        ix.commit()
        ix.add_page("a.pdf", 2, pages(1, 1)[0])
    with colrag.open_index(tmp_path / "ix", readonly=True) as reader:
        assert [(h.file, h.page) for h in reader.search(pages(1, 1)[0][:3], k=5)] == [("a.pdf", 1)]


def test_the_readme_snippet_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "open_index" in b)
    snippet = snippet.replace("/tmp/colrag-demo-index", str(tmp_path / "demo"))
    done = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("report.pdf ") for line in lines)


def test_cli_search_on_an_index_without_retriever_says_so_in_one_sentence(tmp_path):
    with colrag.open_index(tmp_path / "ix", dim=64) as ix:
        ix.add_page("a.pdf", 1, pages(1, 0)[0])
        ix.commit()
    done = subprocess.run(
        [sys.executable, "-m", "colrag", "search", "what is it", "--index", str(tmp_path / "ix")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert (
        len(done.stderr.strip().splitlines()) == 1
        and "precomputed vectors" in done.stderr
        and "open_index" in done.stderr
    )
