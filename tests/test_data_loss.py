"""Never destroy what is not colrag's, never forget what cannot be seen (issue 15 items 1, 4, 5).

Each test asserts that the user's files (or the index's documents) still exist byte for byte."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
from pathlib import Path

import pytest

from colrag.errors import ColragError
from colrag.export import common
from colrag.indexer import Indexer
from colrag.install import MIN_FREE_ENV, MIN_RAM_ENV, install
from colrag.store import Index, RetrieverInfo
from tests.cli_helpers import assert_untouched, user_files
from tests.cli_helpers import run_colrag as colrag
from tests.index_helpers import FakeRetriever, make_pdf

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


# -- item 1: models install / export replace only an empty folder or a bundle of the same kind -------------

USER_PROJECT = {"notes.md": b"# my notes\n", "src/main.py": b"print('hello')\n"}


def test_install_refuses_a_user_folder_at_the_bundle_path(tiny_colqwen2_checkpoint, tmp_path):
    """The issue's reproduction: `models install --only retriever --retriever-from CKPT --models-dir mdir`."""
    mine = user_files(tmp_path / "mdir" / "retriever", USER_PROJECT)
    r = colrag(
        "models",
        "install",
        "--only",
        "retriever",
        "--retriever-from",
        tiny_colqwen2_checkpoint,
        "--models-dir",
        tmp_path / "mdir",
        env_extra={MIN_FREE_ENV: "0", MIN_RAM_ENV: "0"},
    )
    assert r.returncode != 0 and "not a colrag bundle" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert_untouched(mine)
    with pytest.raises(ColragError, match="not a colrag bundle"):
        install(
            tmp_path / "mdir", only="retriever", retriever_from=tiny_colqwen2_checkpoint, reinstall=True, force=True
        )
    assert_untouched(mine)
    assert sorted(p.name for p in (tmp_path / "mdir").iterdir()) == ["retriever"]  # no work folder left either


def test_export_refuses_anything_but_a_bundle_of_its_kind_even_with_force(tiny_colqwen2_checkpoint, tmp_path):
    pytest.importorskip("torch")
    from colrag.export.retriever import export_retriever

    mine = user_files(tmp_path / "project", USER_PROJECT)
    with pytest.raises(ColragError, match="not a colrag bundle"):
        export_retriever(tiny_colqwen2_checkpoint, tmp_path / "project", force=True)
    assert_untouched(mine)
    generator = user_files(
        tmp_path / "gen", {"manifest.json": json.dumps({"format": 1, "kind": "generator", "files": {}}).encode()}
    )
    with pytest.raises(ColragError, match="a colrag generator bundle"):
        export_retriever(tiny_colqwen2_checkpoint, tmp_path / "gen", force=True)
    assert_untouched(generator)
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(ColragError, match="is a file"):
        export_retriever(tiny_colqwen2_checkpoint, tmp_path / "afile", force=True)
    (tmp_path / "link").symlink_to(tmp_path / "project", target_is_directory=True)
    with pytest.raises(ColragError, match="symbolic link"):
        export_retriever(tiny_colqwen2_checkpoint, tmp_path / "link", force=True)
    assert_untouched(mine)


def test_reinstall_swaps_in_a_new_bundle_of_the_same_kind(tiny_colqwen2_checkpoint, tiny_retriever_bundle, tmp_path):
    pytest.importorskip("torch")
    mdir = tmp_path / "mdir"
    shutil.copytree(tiny_retriever_bundle, mdir / "retriever")
    (mdir / "retriever" / "vision.onnx").write_bytes(b"broken")  # a damaged bundle is still ours to replace
    mine = user_files(mdir, {".retriever.partial/keep.txt": b"a user's folder with the old work-folder name\n"})
    [result] = install(mdir, only="retriever", retriever_from=tiny_colqwen2_checkpoint, reinstall=True)
    assert result.status == "installed"
    from colrag.vlm.bundle import verify_bundle

    verify_bundle(mdir / "retriever")
    assert_untouched(mine)
    assert sorted(p.name for p in mdir.iterdir()) == [".retriever.partial", "retriever"]  # no .partial-* or .old-* left


def test_check_target_and_replace_with(tmp_path, monkeypatch):
    out = tmp_path / "retriever"
    assert common.check_target(out, "retriever", force=False) is False  # new
    out.mkdir()
    assert common.check_target(out, "retriever", force=False) is False  # empty
    (out / "manifest.json").write_text(json.dumps({"format": 1, "kind": "retriever", "files": {}}))
    (out / "old.onnx").write_bytes(b"old")
    with pytest.raises(ColragError, match="--force"):
        common.check_target(out, "retriever", force=False)
    assert common.check_target(out, "retriever", force=True) is True
    for exchange in (True, False):  # renameat2 swap, and the rename-aside fallback
        if not exchange:
            monkeypatch.setattr(common, "_exchange", lambda a, b: False)
        work = common.new_work_dir(out)
        (work / "manifest.json").write_text(json.dumps({"format": 1, "kind": "retriever", "files": {}}))
        (work / "new.onnx").write_bytes(b"new")
        common.replace_with(work, out, "retriever", force=True)
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "new.onnx"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["retriever"]
        (out / "new.onnx").rename(out / "old.onnx")
    # a user's file dropped into the target while the export ran is not replaced
    work = common.new_work_dir(out)
    (out / "manifest.json").unlink()
    (out / "mine.txt").write_bytes(b"mine")
    with pytest.raises(ColragError, match="not a colrag bundle"):
        common.replace_with(work, out, "retriever", force=True)
    assert (
        sorted(p.name for p in out.iterdir()) == ["mine.txt", "old.onnx"] and (out / "mine.txt").read_bytes() == b"mine"
    )


def test_new_work_dir_cleans_only_dead_work_folders_of_its_own(tmp_path):
    out = tmp_path / "retriever"
    dead = tmp_path / ".retriever.partial-dead"
    dead.mkdir()
    (dead / common._PARTIAL_MARK).write_text("999999999\n")  # no such pid
    alive = tmp_path / ".retriever.partial-alive"
    alive.mkdir()
    (alive / common._PARTIAL_MARK).write_text(f"{os.getpid()}\n")
    mine = user_files(tmp_path, {".retriever.partial-mine/data.csv": b"1,2\n"})
    work = common.new_work_dir(out)
    assert not dead.exists() and alive.is_dir() and work.is_dir()
    assert_untouched(mine)


# -- item 4: a folder that cannot be read keeps its documents ---------------------------------------------


def run_indexer(index_path: Path, paths: list[Path]):
    retriever = FakeRetriever()
    with Index.open_writer(index_path, RetrieverInfo.of(retriever)) as index:
        return Indexer(index, retriever).run(paths)


def indexed(index_path: Path) -> set[str]:
    with Index.open(index_path) as index:
        return {str(Path(d.path).relative_to(index_path.parent / "docs")) for d in index.documents("done")}


@pytest.fixture
def corpus(tmp_path) -> Path:
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 1, "a")
    make_pdf(docs / "sub" / "b.pdf", 1, "b")
    make_pdf(docs / "share" / "c.pdf", 1, "c")
    make_pdf(docs / "gone" / "d.pdf", 1, "d")
    (docs / "sub" / "readme.txt").write_text("not a pdf\n")
    report = run_indexer(tmp_path / "ix", [docs])
    assert report.indexed_files == 4
    return docs


def test_an_unreadable_folder_keeps_its_documents(corpus, tmp_path, monkeypatch):
    real_scandir = os.scandir

    def scandir(path=".", *a, **kw):  # the sub-folder cannot be listed (permission, I/O error, share offline)
        if os.fspath(path).rstrip("/").endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path, *a, **kw)

    monkeypatch.setattr(os, "scandir", scandir)
    segments_before = {p: p.read_bytes() for p in (tmp_path / "ix" / "vectors").iterdir()}
    report = run_indexer(tmp_path / "ix", [corpus])
    assert report.removed_files == 0 and report.kept_files == 1
    assert report.unreadable_folders == [(str(corpus / "sub"), "Permission denied")]
    assert report.as_dict()["kept_files"] == 1 and report.as_dict()["unreadable_folders"][0]["folder"] == str(
        corpus / "sub"
    )
    assert indexed(tmp_path / "ix") == {"a.pdf", "sub/b.pdf", "share/c.pdf", "gone/d.pdf"}
    for p, data in segments_before.items():
        assert p.read_bytes()[: len(data)] == data


def test_an_empty_mount_point_keeps_its_documents_and_real_deletions_go(corpus, tmp_path):
    (corpus / "share" / "c.pdf").rename(tmp_path / "c.pdf")  # the share is not mounted: an empty folder
    shutil.rmtree(corpus / "gone")  # the user deleted this folder: its document goes
    (corpus / "a.pdf").unlink()  # and this file
    report = run_indexer(tmp_path / "ix", [corpus])
    assert report.removed_files == 2 and report.kept_files == 1
    assert indexed(tmp_path / "ix") == {"sub/b.pdf", "share/c.pdf"}
    (tmp_path / "c.pdf").rename(corpus / "share" / "c.pdf")  # mounted again: nothing to redo
    report = run_indexer(tmp_path / "ix", [corpus])
    assert report.pages == 0 and report.kept_files == 0 and report.skipped_files == 2


def test_a_file_lstat_cannot_see_is_kept(corpus, tmp_path, monkeypatch):
    (corpus / "sub" / "b.pdf").rename(tmp_path / "b.pdf")
    real_lstat = os.lstat

    def lstat(path, *a, **kw):
        if os.fspath(path).endswith("b.pdf"):
            raise OSError(5, "Input/output error", os.fspath(path))
        return real_lstat(path, *a, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    report = run_indexer(tmp_path / "ix", [corpus])
    assert report.removed_files == 0 and report.kept_files == 1 and "sub/b.pdf" in indexed(tmp_path / "ix")


# -- item 5: `colrag remove` of many documents, or all, asks -------------------------------------------


@pytest.fixture
def seven_docs(tmp_path) -> tuple[Path, Path]:
    docs = tmp_path / "docs"
    for i in range(7):
        make_pdf(docs / ("big" if i < 6 else "small") / f"d{i}.pdf", 1, f"d{i}")
    run_indexer(tmp_path / "ix", [docs])
    return docs, tmp_path / "ix"


def documents(index_path: Path) -> int:
    with Index.open(index_path) as index:
        return len(index.documents("done"))


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
def test_remove_of_many_documents_needs_yes_without_a_terminal(seven_docs):
    docs, ix = seven_docs
    for target in (docs / "big", "/"):
        one_line_error(colrag("remove", target, "--index", ix), "--yes")
        assert documents(ix) == 7
    r = colrag("remove", docs / "small" / "d6.pdf", "--index", ix)  # one document: no question
    assert r.returncode == 0 and documents(ix) == 6
    r = colrag("remove", docs / "big", "--index", ix, "--yes")
    assert r.returncode == 0 and r.stdout.count("removed ") == 6 and documents(ix) == 0


def run_on_a_terminal(*args: object, answer: str) -> subprocess.CompletedProcess:
    primary, secondary = pty.openpty()
    try:
        os.write(primary, answer.encode())
        return colrag(*args, stdin=secondary)
    finally:
        os.close(primary)
        os.close(secondary)


@pytest.mark.parametrize("answer, left", [("n\n", 7), ("y\n", 0)])
def test_remove_everything_asks_on_a_terminal(seven_docs, answer, left):
    docs, ix = seven_docs
    r = run_on_a_terminal("remove", docs, "--index", ix, answer=answer)
    assert "remove all 7 documents" in r.stderr, r.stderr
    assert (r.returncode == 0) == (left == 0) and documents(ix) == left
