"""One atomic-write helper (issue 13 item 5): temp + fsync + rename + directory fsync, used everywhere."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from colrag import fsutil
from colrag.store import faiss_io

COLRAG = Path(__file__).resolve().parents[1] / "colrag"


@pytest.fixture
def fsyncs(monkeypatch) -> list[str]:
    """What os.fsync is called on, in order: 'file' or 'dir'."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_atomic_write_replaces_durably(tmp_path, fsyncs):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    fsutil.atomic_write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n' and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert fsyncs == ["file", "dir"]  # the file, then its folder (the rename)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "state.npy"
    fsutil.atomic_write(target, lambda f: np.save(f, np.arange(3), allow_pickle=False))

    def boom(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        fsutil.atomic_write(target, boom)
    np.testing.assert_array_equal(np.load(target, allow_pickle=False), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.npy"]


def test_faiss_files_go_through_the_helper_and_their_temp_files_are_known(tmp_path, fsyncs):
    faiss = faiss_io.faiss_module()
    flat = faiss.IndexFlatIP(4)
    flat.add(np.eye(4, dtype=np.float32))
    name = "seg-000001-v000001.faiss"
    faiss_io.write_index(flat, tmp_path, name)
    assert fsyncs == ["file", "dir"]
    assert faiss_io.read_index(tmp_path, name, mmap=None).ntotal == 4
    assert [p.name for p in tmp_path.iterdir()] == [name]
    seen: list[str] = []
    real = fsutil.atomic_write

    def spy(path, write, **kw):
        def tee(f):
            seen.extend(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))  # the temp file, being written
            return write(f)

        real(path, tee, **kw)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(faiss_io, "atomic_write", spy)
        faiss_io.write_index(flat, tmp_path, "lists-g000000001.faiss")
    (temp,) = seen
    assert faiss_io.TEMP_NAME.match(temp), temp  # a writer killed mid-write leaves a name repair deletes
    assert faiss_io.TEMP_NAME.match(".seg-000001-v000001.faiss.tmp")  # and the name colrag used before
    assert not faiss_io.TEMP_NAME.match(".notes.faiss.abc.tmp") and not faiss_io.TEMP_NAME.match(name)


def test_no_module_replaces_files_its_own_way():
    """Every replaced file goes through fsutil.atomic_write."""
    offenders = []
    own_way = re.compile(r"os\.replace\(|mkstemp\(|\btmp\w*\.replace\(|np\.save\(f|write_index\([^)]*str\(")
    for path in COLRAG.rglob("*.py"):
        if path.name == "fsutil.py":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if own_way.search(line):
                offenders.append(f"{path.relative_to(COLRAG)}:{no}: {line.strip()}")
    assert not offenders, offenders
