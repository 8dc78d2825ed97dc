"""Indexing: hostile files, incremental runs, kill -9 and resume, one writer; the CLI end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from colrag.errors import IndexStoreError
from colrag.indexer import Indexer, remove
from colrag.search import Searcher
from colrag.store import Index, RetrieverInfo
from tests.cli_helpers import run_colrag as colrag
from tests.index_helpers import SHARED_PDFS, FakeRetriever, make_pdf

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = [
    "14_encrypted_user_password.pdf",
    "15_corrupt_flate_stream.pdf",
    "17_zero_pages_valid.pdf",
    "18_zero_bytes.pdf",
    "21_tiny_pages_3x3pt.pdf",
    "12_rotated90_nics_table.pdf",
]


def own_hostile_files(folder: Path) -> None:
    """Hostile files made here, so the core tests run without ../shared."""
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "garbage.pdf").write_bytes(b"%PDF-1.7\nnot really" * 20)
    import pymupdf

    src = make_pdf(folder / ".plain.tmp", 1, "locked")
    doc = pymupdf.open(src)
    doc.save(folder / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="owner")
    doc.close()
    src.unlink()


def run_indexer(index_path: Path, paths, retriever=None, **kw):
    retriever = retriever or FakeRetriever()
    with Index.open_writer(index_path, RetrieverInfo.of(retriever)) as index:
        return Indexer(index, retriever, **kw).run(paths)


def visible(index_path: Path) -> list[tuple[str, int]]:
    with Index.open(index_path) as index:
        return sorted((Path(p.path).name, p.page_no) for p in index.snapshot().pages)


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_good_and_hostile_files(tmp_path):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 3, "a")
    make_pdf(docs / "sub" / "b.pdf", 2, "b")
    own_hostile_files(docs)
    retriever = FakeRetriever()
    report = run_indexer(tmp_path / "ix", [docs], retriever)
    assert report.pages == 5 and report.indexed_files == 2 and not report.ok
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert set(reasons) == {"empty.pdf", "garbage.pdf", "locked.pdf"}
    assert "empty" in reasons["empty.pdf"] and "--password" in reasons["locked.pdf"]
    assert visible(tmp_path / "ix") == [("a.pdf", 1), ("a.pdf", 2), ("a.pdf", 3), ("b.pdf", 1), ("b.pdf", 2)]
    # a second run does no work (still reports the files that cannot be indexed)
    calls = retriever.calls
    again = run_indexer(tmp_path / "ix", [docs], retriever)
    assert again.pages == 0 and retriever.calls == calls and again.skipped_files == 2
    assert {Path(f.path).name for f in again.failures} == {"empty.pdf", "garbage.pdf", "locked.pdf"}
    # the password opens the encrypted one
    unlocked = run_indexer(tmp_path / "ix", [docs], retriever, password="pw")
    assert unlocked.pages == 1 and ("locked.pdf", 1) in visible(tmp_path / "ix")
    with Index.open(tmp_path / "ix") as index:
        assert index.check().ok


def test_shared_hostile_pdfs(tmp_path):
    if not SHARED_PDFS.is_dir():
        pytest.skip(f"{SHARED_PDFS} is absent")
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in HOSTILE:
        shutil.copy(SHARED_PDFS / name, docs / name)
    report = run_indexer(tmp_path / "ix", [docs])
    failed = {Path(f.path).name: f.reason for f in report.failures}
    assert set(failed) == {"14_encrypted_user_password.pdf", "17_zero_pages_valid.pdf", "18_zero_bytes.pdf"}
    assert report.pages == 1 + 10 + 1  # corrupt flate (renders, with a warning), 10 tiny pages, rotated table
    assert any("zlib" in w.reason for w in report.warnings)


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_changed_file_reindexed_and_removed_file_dropped(tmp_path):
    docs = tmp_path / "docs"
    a = make_pdf(docs / "a.pdf", 2, "a")
    b = make_pdf(docs / "b.pdf", 3, "b")
    retriever = FakeRetriever()
    run_indexer(tmp_path / "ix", [docs], retriever)
    # touched but identical: hashed, not re-embedded
    os.utime(a, ns=(time.time_ns(), time.time_ns() + 10**9))
    calls = retriever.calls
    assert run_indexer(tmp_path / "ix", [docs], retriever).pages == 0 and retriever.calls == calls
    # changed content: re-indexed (now 4 pages); removed file: dropped
    make_pdf(a, 4, "a-v2")
    b.unlink()
    report = run_indexer(tmp_path / "ix", [docs], retriever)
    assert report.pages == 4 and report.removed_files == 1 and report.ok
    assert visible(tmp_path / "ix") == [("a.pdf", i) for i in (1, 2, 3, 4)]
    with Index.open(tmp_path / "ix") as index:
        hits = Searcher(index, retriever).search("a-v2 page 1", top_k=10)
        assert {Path(h.file).name for h in hits} == {"a.pdf"}
    # explicit removal
    c = make_pdf(tmp_path / "loose" / "c.pdf", 1, "c")
    run_indexer(tmp_path / "ix", [c], retriever)
    with Index.open_writer(tmp_path / "ix", None) as index:
        assert remove(index, [c]) == [str(c)]
        assert index.check().ok
    assert ("c.pdf", 1) not in visible(tmp_path / "ix")


def start_slow_indexer(index_path: Path, docs: Path, slow: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.index_helpers", str(index_path), str(docs), "--slow", str(slow)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_pages(proc: subprocess.Popen, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"indexer exited early: {proc.stderr.read()}")
        if line.startswith("page ") and int(line.split()[1]) >= n:
            return
    raise AssertionError("indexer too slow")


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_kill_9_mid_index_then_resume(tmp_path):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 3, "a")
    make_pdf(docs / "b.pdf", 6, "b")
    make_pdf(docs / "c.pdf", 2, "c")
    proc = start_slow_indexer(tmp_path / "ix", docs, slow=0.3)
    try:
        wait_for_pages(proc, 5)  # a.pdf done, b.pdf half way
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with Index.open(tmp_path / "ix") as index:
        report = index.check()
        assert report.ok, report.problems
        before = visible(tmp_path / "ix")
        counts = {name: sum(1 for n, _ in before if n == name) for name in ("a.pdf", "b.pdf", "c.pdf")}
        assert counts["a.pdf"] == 3 and counts["b.pdf"] in (0, 6) and counts["c.pdf"] in (0, 2)  # whole documents only
        in_progress = index.documents("indexing")  # b.pdf (or c.pdf on a slow machine), invisible to search
        assert len(in_progress) <= 1
        committed = index.stored_page_numbers(in_progress[0].id) if in_progress else set()
        assert committed == set(range(1, len(committed) + 1))
    retriever = FakeRetriever()
    resumed = run_indexer(tmp_path / "ix", [docs], retriever)
    assert resumed.ok
    assert resumed.pages == 11 - len(before) - len(committed)  # committed pages are not embedded again
    expected = [("a.pdf", i) for i in (1, 2, 3)] + [("b.pdf", i) for i in range(1, 7)] + [("c.pdf", 1), ("c.pdf", 2)]
    assert visible(tmp_path / "ix") == expected
    # same vectors as an index built in one go
    run_indexer(tmp_path / "fresh", [docs])
    with Index.open(tmp_path / "ix") as resumed_ix, Index.open(tmp_path / "fresh") as fresh_ix:
        assert resumed_ix.check().ok
        s1, s2 = resumed_ix.snapshot(), fresh_ix.snapshot()
        v1 = {(p.path, p.page_no): np.asarray(resumed_ix.page_vectors(s1, p)) for p in s1.pages}
        v2 = {(p.path, p.page_no): np.asarray(fresh_ix.page_vectors(s2, p)) for p in s2.pages}
        assert v1.keys() == v2.keys()
        for key in v1:
            np.testing.assert_array_equal(v1[key], v2[key])


def test_second_writer_refused_while_first_runs_and_search_works(tmp_path):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2, "a")
    make_pdf(docs / "b.pdf", 30, "b")
    proc = start_slow_indexer(tmp_path / "ix", docs, slow=0.2)
    try:
        wait_for_pages(proc, 3)
        with pytest.raises(IndexStoreError, match=rf"being written by another colrag process \(pid {proc.pid}\)"):
            Index.open_writer(tmp_path / "ix", RetrieverInfo.of(FakeRetriever()))
        with Index.open(tmp_path / "ix") as index:  # searching while the writer appends
            hits = Searcher(index, FakeRetriever()).search("a page 1", top_k=2)
            assert {Path(h.file).name for h in hits} == {"a.pdf"}
    finally:
        proc.kill()
        proc.wait(10)


# -- the CLI, end to end with the tiny exported retriever ---------------------------------


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_cli_messages_without_a_bundle(tmp_path):
    home = {"COLRAG_HOME": str(tmp_path / "home")}
    r = colrag("search", "chart", env_extra=home)
    assert r.returncode == 1 and "colrag index DIR" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 1)
    r = colrag("index", docs, env_extra=home)
    assert r.returncode == 1 and "colrag models install" in r.stderr and "colrag models export retriever" in r.stderr
    r = colrag("index", tmp_path / "missing", env_extra=home)
    assert r.returncode == 2 and "no such file" in r.stderr
    # an index built by the library: status and remove need no retriever
    run_indexer(tmp_path / "ix", [docs])
    r = colrag("status", "--index", tmp_path / "ix", "--json", "--check")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["index"]["documents"] == 1 and status["index"]["pages"] == 1 and status["check"]["ok"]
    r = colrag("remove", docs / "a.pdf", "--index", tmp_path / "ix")
    assert r.returncode == 0 and "removed" in r.stdout
    r = colrag("search", "chart", "--index", tmp_path / "ix")
    assert r.returncode == 1 and "colrag index DIR" in r.stderr
    for cmd in ("index", "search", "status", "remove"):
        r = colrag(cmd, "--help")
        assert r.returncode == 0 and "--index" in r.stdout


@pytest.fixture(scope="module")
def real_bundle(tiny_retriever_bundle):
    return tiny_retriever_bundle


def test_cli_end_to_end_with_tiny_retriever(tmp_path, real_bundle):
    docs = tmp_path / "docs"
    make_pdf(docs / "report.pdf", 2, "report")
    own_hostile_files(docs)
    ix = tmp_path / "ix"
    r = colrag("index", docs, "--index", ix, "--retriever", real_bundle, "--threads", "2")
    assert r.returncode == 1, r.stderr
    assert "2 pages" in r.stdout and r.stderr.count("failed:") == 3
    r = colrag("index", docs, "--index", ix, "--retriever", real_bundle, "--json")
    report = json.loads(r.stdout)  # the files that failed before are skipped: not a failure of this run
    assert r.returncode == 0 and report["run"]["pages"] == 0 and report["run"]["unchanged_files"] == 1
    assert report["failures"] == [] and len(report["known_failures"]) == 3
    r = colrag("search", "quarterly report", "--index", ix, "--retriever", real_bundle, "--json", "--top-k", "5")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)["results"]
    assert [h["page"] for h in hits] and {h["file"] for h in hits} == {str(docs / "report.pdf")}
    assert sorted(h["page"] for h in hits) == [1, 2] and hits[0]["score"] >= hits[1]["score"]
    r = colrag("search", "quarterly report", "--index", ix, "--retriever", real_bundle)
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("1\t")
    r = colrag("status", "--index", ix, "--json")
    status = json.loads(r.stdout)
    assert (
        status["index"]["documents"] == 1 and status["index"]["pages"] == 2 and status["index"]["failed_documents"] == 3
    )


def test_cli_refuses_an_index_of_another_retriever(tmp_path, real_bundle):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 1)
    run_indexer(tmp_path / "ix", [docs])  # built with the fake
    r = colrag("search", "x", "--index", tmp_path / "ix", "--retriever", real_bundle)
    assert r.returncode == 1 and "built with retriever" in r.stderr


def test_search_explain_writes_readable_heatmaps(tmp_path, real_bundle):
    from PIL import Image

    docs = tmp_path / "docs"
    make_pdf(docs / "report.pdf", 2, "report")
    ix = tmp_path / "ix"
    assert colrag("index", docs, "--index", ix, "--retriever", real_bundle).returncode == 0
    out = tmp_path / "maps"
    r = colrag(
        "search",
        "quarterly report",
        "--index",
        ix,
        "--retriever",
        real_bundle,
        "--top-k",
        "2",
        "--explain",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    paths = [line.split(": ", 1)[1] for line in r.stderr.splitlines() if line.startswith("heatmap for result")]
    assert len(paths) == 2 and all(Path(p).parent == out for p in paths)
    with Image.open(paths[0]) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 5  # a page-sized, non-uniform picture


def test_search_explain_with_a_moved_file(tmp_path, real_bundle):
    """Every hit is still listed; the heatmaps of the files still there are drawn (by default under
    COLRAG_HOME/out, not in the working directory); the missing file is named once, with the fix."""
    docs = tmp_path / "docs"
    make_pdf(docs / "kept.pdf", 1, "kept")
    gone = make_pdf(docs / "gone.pdf", 2, "gone")
    ix = tmp_path / "ix"
    assert colrag("index", docs, "--index", ix, "--retriever", real_bundle).returncode == 0
    gone.rename(tmp_path / "elsewhere.pdf")
    r = colrag("search", "report", "--index", ix, "--retriever", real_bundle, "--top-k", "3", "--explain")
    assert r.returncode == 0, r.stderr
    assert sorted(line.split("\t")[2] for line in r.stdout.splitlines()) == [str(gone)] * 2 + [str(docs / "kept.pdf")]
    maps = [Path(line.split(": ", 1)[1]) for line in r.stderr.splitlines() if line.startswith("heatmap for result")]
    assert len(maps) == 1 and maps[0].is_file() and maps[0].parent == Path(os.environ["COLRAG_HOME"]) / "out"
    warnings = [line for line in r.stderr.splitlines() if str(gone) in line]
    assert len(warnings) == 1 and "missing" in warnings[0]
    assert "colrag index" in warnings[0] and f"colrag remove {gone}" in warnings[0]
    assert not list(ROOT.glob("explain-*.png"))


def test_status_wording(tmp_path, real_bundle):
    """Counts that add up, "being indexed" for an unfinished document, and the bundle in use."""
    docs = tmp_path / "docs"
    make_pdf(docs / "report.pdf", 2, "report")
    own_hostile_files(docs)
    ix = tmp_path / "ix"
    colrag("index", docs, "--index", ix, "--retriever", real_bundle)
    r = colrag("status", "--index", ix, "--retriever", real_bundle)
    assert r.returncode == 0, r.stderr
    lines = {line[:10].strip(): line[11:] for line in r.stdout.splitlines()}
    assert lines["documents"] == "1 indexed, 3 failed"
    assert lines["pages"] == "2 indexed, 0 failed"
    assert lines["retriever"].startswith(f"{real_bundle} (bundle ") and "exported from" in lines["retriever"]
    status = json.loads(colrag("status", "--index", ix, "--retriever", real_bundle, "--json").stdout)
    assert status["retriever"]["path"] == str(real_bundle)
    # another bundle at the default place: said so, and no path in JSON
    r = colrag("status", "--index", ix, "--models-dir", tmp_path / "no-models")
    assert "no usable retriever bundle at" in r.stdout
    assert json.loads(colrag("status", "--index", ix, "--json").stdout)["retriever"]["path"] is None
    # a document whose indexing started and has not finished
    with Index.open_writer(ix, None) as index:
        index.begin_document(str(docs / "later.pdf"), 1, 1, "0" * 64, 3)
    r = colrag("status", "--index", ix, "--retriever", real_bundle)
    assert (
        "1 being indexed (the next `colrag index` of its folder finishes it)" in r.stdout
        and "interrupted" not in r.stdout
    )


def test_known_failures_are_skipped_and_keep_exit_0(tmp_path, real_bundle):
    docs = tmp_path / "docs"
    make_pdf(docs / "report.pdf", 1, "report")
    (docs / "garbage.pdf").write_bytes(b"%PDF-1.7\nnot really" * 20)
    ix = tmp_path / "ix"
    args = ("--index", ix, "--retriever", real_bundle)
    first = colrag("index", docs, *args)
    assert first.returncode == 1 and f"failed: {docs / 'garbage.pdf'}: not a readable PDF" in first.stderr
    assert "1 page from 1 file indexed" in first.stdout and "1 document, 1 page" in first.stdout
    again = colrag("index", docs, *args)
    assert again.returncode == 0, again.stderr
    assert f"skipped {docs / 'garbage.pdf'} (failed before: not a readable PDF" in again.stderr
    assert "--retry-failed tries them again" in again.stderr and "failed:" not in again.stderr
    assert "0 failed (1 more failed before, skipped)" in again.stdout
    # a new failure changes the exit code; the old one stays a known one
    (docs / "empty.pdf").write_bytes(b"")
    third = json.loads(colrag("index", docs, *args, "--json").stdout)
    assert [Path(f["file"]).name for f in third["failures"]] == ["empty.pdf"]
    assert [Path(f["file"]).name for f in third["known_failures"]] == ["garbage.pdf"]
    # --retry-failed tries both again (they still fail: exit 1)
    r = colrag("index", docs, *args, "--retry-failed", "--json")
    retried = json.loads(r.stdout)
    assert r.returncode == 1 and sorted(Path(f["file"]).name for f in retried["failures"]) == [
        "empty.pdf",
        "garbage.pdf",
    ]
    assert retried["known_failures"] == []


def test_nothing_to_index_is_exit_2_and_creates_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    ix = tmp_path / "ix"
    for folder in ("empty", "notes"):
        r = colrag("index", tmp_path / folder, "--index", ix, "--models-dir", tmp_path / "no-models")
        assert r.returncode == 2
        assert r.stderr.startswith(f"error: no PDF found in {tmp_path / folder} (colrag indexes PDF, XPS, EPUB")
        assert len(r.stderr.splitlines()) == 1 and not ix.exists()


def test_ctrl_c_says_interrupted_once_and_never_done(tmp_path, real_bundle):
    docs = tmp_path / "docs"
    make_pdf(docs / "long.pdf", 40, "long")
    env = {k: v for k, v in os.environ.items() if k != "COLRAG_DEBUG"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "colrag",
            "index",
            str(docs),
            "--index",
            str(tmp_path / "ix"),
            "--retriever",
            str(real_bundle),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stderr:
            if line.startswith("indexing 40 pages from 1 file"):
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert rest.count("interrupted") == 1 and "interrupted: the pages committed so far are kept" in rest
    assert "done" not in rest and "Traceback" not in rest
