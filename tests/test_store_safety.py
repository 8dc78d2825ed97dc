"""Index storage against damaged, hostile or foreign folders (issue 15 items 2, 3, 9, 10) and
numbered catalog migrations (issue 13 item 9).

The data-loss tests assert that the user's files still exist byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import pytest

from colrag.errors import IndexStoreError
from colrag.store import Index, RetrieverInfo, coarse
from colrag.store import catalog as cat
from colrag.store.catalog import migrations as mig
from colrag.store.index import MANIFEST_FILE
from colrag.store.segments import SEGMENTS_DIR
from tests.cli_helpers import assert_untouched, user_files
from tests.cli_helpers import run_colrag as colrag
from tests.index_helpers import FakeRetriever

ROOT = Path(__file__).resolve().parents[1]
INFO = RetrieverInfo.of(FakeRetriever())

# catalog.py's schema before migrations existed (colrag up to 2026-12-02, catalog version 2), verbatim
SCHEMA_BEFORE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    committed_rows INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT,
    n_pages INTEGER,
    status TEXT NOT NULL CHECK (status IN ('indexing', 'done', 'failed')),
    error TEXT,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_path_state
    ON documents (path, status = 'indexing');
CREATE TABLE IF NOT EXISTS pages (
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    page_no INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    segment_id INTEGER NOT NULL REFERENCES segments (id),
    row_offset INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    UNIQUE (doc_id, page_no)
);
CREATE INDEX IF NOT EXISTS pages_segment ON pages (segment_id, row_offset);
CREATE TABLE IF NOT EXISTS page_errors (
    doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    page_no INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('error', 'warning')),
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS page_errors_doc ON page_errors (doc_id);
"""


CURRENT = cat.latest_version()  # this colrag's catalog version, before a test adds one


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_index(path: Path, n_docs: int = 1) -> Path:
    with Index.open_writer(path, INFO) as index:
        for d in range(n_docs):
            doc = index.begin_document(f"/docs/{d}.pdf", 100, 1, f"sha-{d}", 2)
            index.add_pages(doc, [(i + 1, 10, 20, unit_rows(5, 10 * d + i)) for i in range(2)])
            index.finish_document(doc)
    return path


def tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


# -- migrations (issue 13 item 9) --------------------------------------------------------------


def schema_of(file: Path) -> list[tuple]:
    with closing(sqlite3.connect(file)) as c:
        tables = [
            r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') ORDER BY name")
        ]
        return [
            (t, c.execute(f"PRAGMA index_info('{t}')").fetchall() or c.execute(f"PRAGMA table_info('{t}')").fetchall())
            for t in tables
        ]


def test_a_new_catalog_gets_every_migration_and_equals_the_schema_before_migrations(tmp_path):
    make_index(tmp_path / "ix")
    file = tmp_path / "ix" / cat.CATALOG_FILE
    with closing(sqlite3.connect(file)) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == cat.latest_version() >= cat.BASELINE_VERSION == 2
    old = tmp_path / "old.sqlite"
    with closing(sqlite3.connect(old)) as c:
        c.executescript(SCHEMA_BEFORE_MIGRATIONS)
    if cat.latest_version() == 2:  # the baseline migration is exactly the schema it replaced
        assert schema_of(file) == schema_of(old)


@pytest.fixture
def migration_3(monkeypatch):
    """A test-only next migration (a new table), as another engineer would append it."""
    monkeypatch.setattr(mig, "MIGRATIONS", dict(mig.MIGRATIONS))
    calls = []

    @cat.migration(CURRENT + 1)
    def _m003_notes(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("CREATE TABLE notes (doc_id INTEGER REFERENCES documents (id) ON DELETE CASCADE, text TEXT)")
        conn.execute("INSERT INTO notes SELECT id, 'migrated' FROM documents")

    return calls


def test_writer_applies_a_new_migration_once_and_keeps_the_data(tmp_path, migration_3, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", {v: f for v, f in mig.MIGRATIONS.items() if v <= CURRENT})
        make_index(tmp_path / "ix", n_docs=2)  # written by a colrag that knew only the baseline
    with Index.open_writer(tmp_path / "ix", INFO) as index:
        assert cat.version(index.conn) == CURRENT + 1 and migration_3 == [1]
        assert index.conn.execute("SELECT COUNT(*) FROM notes WHERE text = 'migrated'").fetchone()[0] == 2
        assert len(index.snapshot().pages) == 4 and index.check().ok
    with Index.open_writer(tmp_path / "ix", INFO):
        assert migration_3 == [1]  # applied once


def test_reader_upgrades_an_older_catalog_it_can_write(tmp_path, migration_3, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", {v: f for v, f in mig.MIGRATIONS.items() if v <= CURRENT})
        make_index(tmp_path / "ix")
    with Index.open(tmp_path / "ix") as reader:
        assert cat.version(reader.conn) == CURRENT + 1 and len(reader.snapshot().pages) == 2
        assert reader.conn.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 1


def test_a_failing_migration_changes_nothing(tmp_path, monkeypatch):
    make_index(tmp_path / "ix")
    before = (tmp_path / "ix" / cat.CATALOG_FILE).read_bytes()
    monkeypatch.setattr(mig, "MIGRATIONS", dict(mig.MIGRATIONS))

    @cat.migration(cat.latest_version() + 1)
    def _broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(IndexStoreError, match="no such table"):
        Index.open_writer(tmp_path / "ix", INFO)
    with closing(sqlite3.connect(tmp_path / "ix" / cat.CATALOG_FILE)) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == cat.latest_version() - 1
        assert not c.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall()
        assert c.execute("SELECT COUNT(*) FROM pages").fetchone()[0] == 2
    assert (tmp_path / "ix" / cat.CATALOG_FILE).read_bytes() == before
    assert not (tmp_path / "ix" / "write.lock").read_bytes()  # the lock was released


def test_migrations_must_be_numbered_in_sequence(monkeypatch):
    monkeypatch.setattr(mig, "MIGRATIONS", dict(mig.MIGRATIONS))
    with pytest.raises(RuntimeError, match="out of sequence"):
        cat.migration(cat.latest_version() + 2)(lambda conn: None)
    with pytest.raises(RuntimeError, match="out of sequence"):
        cat.migration(cat.latest_version())(lambda conn: None)


# -- readers: read-only, never create, damaged catalogs (item 9) ---------------------------------


@pytest.mark.parametrize("damage", ["missing", "zero bytes"])
def test_a_reader_never_creates_a_catalog(tmp_path, damage):
    make_index(tmp_path / "ix")
    file = tmp_path / "ix" / cat.CATALOG_FILE
    file.unlink()
    if damage == "zero bytes":
        file.write_bytes(b"")
    before = tree(tmp_path / "ix")
    with pytest.raises(IndexStoreError, match="is not a colrag index"):
        Index.open(tmp_path / "ix")
    assert tree(tmp_path / "ix") == before
    r = colrag("status", "--index", tmp_path / "ix")
    one_line_error(r, "is not a colrag index")
    assert "schema version 0" not in r.stderr and tree(tmp_path / "ix") == before
    # a writer refuses too: without the catalog nothing says which vectors are valid (repair would drop them all)
    with pytest.raises(IndexStoreError, match="damaged"):
        Index.open_writer(tmp_path / "ix", INFO)
    assert tree(tmp_path / "ix") == before


@pytest.mark.slow  # seconds of subprocesses, crashes, time limits or big synthetic corpora
@pytest.mark.parametrize("damage", ["random bytes", "cut in half"])
def test_a_damaged_catalog_is_one_line_naming_the_file(tmp_path, damage):
    make_index(tmp_path / "ix", n_docs=40)
    file = tmp_path / "ix" / cat.CATALOG_FILE
    data = file.read_bytes()
    file.write_bytes(np.random.default_rng(0).bytes(len(data)) if damage == "random bytes" else data[: len(data) // 2])

    def use(index: Index) -> None:
        index.snapshot()
        index.stats()

    for opener in (lambda: Index.open(tmp_path / "ix"), lambda: Index.open_writer(tmp_path / "ix", INFO)):
        with pytest.raises(IndexStoreError, match=str(file)), opener() as index:
            use(index)
    for cmd in (("status",), ("status", "--check"), ("remove", "/docs/0.pdf")):
        one_line_error(colrag(*cmd, "--index", tmp_path / "ix"), str(file))


@contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """The folder and everything in it cannot be written (chmod; root, whom chmod does not stop,
    also drops to an unprivileged effective uid meanwhile)."""
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    root = os.geteuid() == 0
    try:
        if root:
            os.setegid(65534)
            os.seteuid(65534)
        yield
    finally:
        if root:
            os.seteuid(0)
            os.setegid(0)
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A folder an unprivileged uid can reach (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="colrag-ro-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_search_and_status_work_on_a_read_only_folder(public_tmp, monkeypatch):
    monkeypatch.setattr(coarse, "MIN_ROWS", 200)
    ix = make_index(public_tmp / "ix", n_docs=30)  # with coarse centroids
    before = tree(ix)
    assert not (ix / (cat.CATALOG_FILE + "-wal")).exists()  # closed cleanly: a reader has to start the WAL itself
    import colrag.search  # noqa: F401  (imports happen before the uid drops)
    from colrag.search import Searcher

    retriever = FakeRetriever()
    with unwritable(ix), Index.open(ix) as reader:
        snap = reader.snapshot()
        assert len(snap.pages) == 60 and snap.coarse is not None
        stats = reader.stats()
        assert stats["pages"] == 60
        assert reader.check().ok
        hits = Searcher(reader, retriever).search("page one", 3)
        assert len(hits) == 3
        assert (
            len(Searcher(reader, retriever, exact_all_pages=0, candidates=8).search("page one", 3)) == 3
        )  # page lists in memory
    assert tree(ix) == before


def test_an_older_catalog_in_a_read_only_folder_says_how_to_upgrade(public_tmp, migration_3, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", {v: f for v, f in mig.MIGRATIONS.items() if v <= CURRENT})
        ix = make_index(public_tmp / "ix")
    with unwritable(ix), pytest.raises(IndexStoreError, match="upgrade"):
        Index.open(ix)


# -- foreign folders, links, repair (item 2) --------------------------------------------------------


def test_a_user_folder_named_like_an_index_is_never_touched(tmp_path):
    folder = tmp_path / "mine"
    mine = user_files(folder, {"vectors/embeddings.npy": b"\x93NUMPY my data", "ann/notes.txt": b"my notes\n"})
    with pytest.raises(IndexStoreError, match="not a colrag index"):
        Index.open_writer(folder, INFO)
    assert_untouched(mine)
    assert sorted(p.name for p in folder.iterdir()) == ["ann", "vectors"]  # nothing added either
    for cmd in (("status",), ("remove", "/x.pdf")):
        one_line_error(colrag(*cmd, "--index", folder), "not a colrag index")
    assert_untouched(mine)


@pytest.mark.parametrize("entry", ["catalog.sqlite", "write.lock", "notes.txt"])
def test_creating_an_index_in_a_non_empty_foreign_folder_is_refused(tmp_path, entry):
    folder = tmp_path / "mine"
    mine = user_files(folder, {entry: b"SQLite format 3\0 but really a user's file" * 10})
    with pytest.raises(IndexStoreError, match="not a colrag index"):
        Index.open_writer(folder, INFO)
    assert_untouched(mine)


def test_an_interrupted_creation_can_be_retried(tmp_path):
    """`colrag index` killed before it wrote the manifest leaves write.lock, vectors/ and an empty catalog."""
    folder = tmp_path / "ix"
    folder.mkdir()
    (folder / SEGMENTS_DIR).mkdir()
    (folder / "write.lock").write_bytes(b"")
    with closing(cat.connect(folder / cat.CATALOG_FILE)) as conn:
        cat.migrate(conn)
    make_index(folder)
    with Index.open(folder) as reader:
        assert len(reader.snapshot().pages) == 2


@pytest.mark.parametrize("sub", [SEGMENTS_DIR, "ann"])
def test_a_symlinked_sub_folder_is_refused_and_its_files_kept(tmp_path, sub):
    ix = make_index(tmp_path / "ix")
    elsewhere = tmp_path / "thesis"
    mine = user_files(
        elsewhere,
        {
            "thesis.tex": b"\\documentclass{article}\n",
            "data.csv": b"a,b\n1,2\n",
            "seg-000009-v000001.faiss": b"x" * 256,
        },
    )
    if sub == SEGMENTS_DIR:
        for f in (ix / sub).iterdir():  # the user moved the vectors elsewhere and linked the folder
            shutil.copy(f, elsewhere / f.name)
            mine[elsewhere / f.name] = f.read_bytes()
        shutil.rmtree(ix / sub)
    (ix / sub).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(IndexStoreError, match="link"):
        Index.open_writer(ix, INFO)
    one_line_error(colrag("remove", "/docs/0.pdf", "--index", ix), "link")
    assert_untouched(mine)


def test_repair_deletes_only_names_colrag_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(coarse, "MIN_ROWS", 200)
    ix = make_index(tmp_path / "ix", n_docs=30)
    with Index.open_writer(ix, INFO) as index:
        index.writer.refresh_lists(force=True)
    mine = user_files(
        ix,
        {
            "vectors/embeddings.npy": b"mine",
            "vectors/seg-1.faiss": b"mine",
            "vectors/notes.faiss": b"mine",
            "vectors/seg-000001-v000001.faiss.bak": b"mine",
            "ann/notes.txt": b"mine",
            "ann/g1.pages.npy.orig": b"mine",
        },
    )
    leftovers = user_files(
        ix,
        {
            "vectors/seg-000077-v000001.faiss": b"\0" * 256,
            "vectors/.seg-000001-v000099.faiss.tmp": b"\0" * 4,
            "vectors/lists-g000000001.faiss": b"old",
            "vectors/seg-000003.i8": b"\0" * 256,
            "ann/g0.pages.npy": b"old",
        },
    )
    with Index.open_writer(ix, INFO) as index:
        doc = index.begin_document("/docs/new.pdf", 1, 1, "sha-new", 1)
        index.add_pages(doc, [(1, 10, 20, unit_rows(5, 999))])
        index.finish_document(doc)
        index.writer.refresh_lists(force=True)
        assert index.check().ok
    assert_untouched(mine)
    assert not any(p.exists() for p in leftovers)  # crash leftovers named like colrag's files do go


def test_a_linked_segment_or_lock_file_is_never_written_through(tmp_path):
    ix = make_index(tmp_path / "ix")
    mine = user_files(tmp_path / "elsewhere", {"victim.bin": b"precious bytes" * 100, "lockvictim.txt": b"keep me\n"})
    seg = next((ix / SEGMENTS_DIR).glob("seg-*.faiss"))
    seg.unlink()
    seg.symlink_to(tmp_path / "elsewhere" / "victim.bin")
    with pytest.raises(IndexStoreError), Index.open_writer(ix, INFO) as index:
        doc = index.begin_document("/docs/new.pdf", 1, 1, "sha-new", 1)
        index.add_pages(doc, [(1, 10, 20, unit_rows(5, 999))])
    seg.unlink()
    (ix / "write.lock").unlink()
    (ix / "write.lock").symlink_to(tmp_path / "elsewhere" / "lockvictim.txt")
    with pytest.raises(IndexStoreError):
        Index.open_writer(ix, INFO)
    assert_untouched(mine)


# -- names read from the catalog or a state file (item 3) ---------------------------------------------


def test_a_segment_name_from_the_catalog_is_validated_before_use(tmp_path):
    ix = make_index(tmp_path / "ix")
    mine = user_files(tmp_path, {"victim.txt": b"do not overwrite\n"})
    with closing(sqlite3.connect(ix / cat.CATALOG_FILE)) as c:
        c.execute("UPDATE segments SET name = '../../victim.txt'")
        c.commit()
    with pytest.raises(IndexStoreError, match="not one colrag writes"), Index.open_writer(ix, INFO) as index:
        doc = index.begin_document("/docs/new.pdf", 1, 1, "sha-new", 1)
        index.add_pages(doc, [(1, 10, 20, unit_rows(5, 999))])
    with pytest.raises(IndexStoreError, match="not one colrag writes"), Index.open(ix) as reader:
        reader.snapshot()
    one_line_error(colrag("status", "--check", "--index", ix), "not one colrag writes")
    assert_untouched(mine)


@pytest.mark.parametrize("key", ["coarse", "lists"])
def test_a_vector_file_name_from_the_catalog_meta_is_validated(tmp_path, key):
    ix = make_index(tmp_path / "ix")
    mine = user_files(tmp_path, {"victim.faiss": b"mine"})
    record = {"file": "../../victim.faiss", "n_centroids": 4, "generation": 1}
    with closing(sqlite3.connect(ix / cat.CATALOG_FILE)) as c:
        c.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(record)))
        c.commit()
    with pytest.raises(IndexStoreError, match=key), Index.open_writer(ix, INFO) as index:
        index.snapshot()
    with pytest.raises(IndexStoreError, match=key), Index.open(ix) as reader:
        reader.snapshot()
    assert_untouched(mine)


# -- index manifests (item 10) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"retriever": "x"},
        {"retriever": {"name": "x"}},
        {"retriever": {"bundle_id": 7}},
        {"dim": "x"},
        {"dim": None},
        {"dim": -1},
        {"max_pixels": "big"},
        {"render": None},
        {"render": {"dpi": 300}},
        {"render": {"max_side": "4096"}},
        {"schema_version": "2"},
        {"format": None},
    ],
)
def test_a_damaged_index_manifest_is_one_line(tmp_path, change):
    ix = make_index(tmp_path / "ix")
    file = ix / MANIFEST_FILE
    manifest = json.loads(file.read_text())
    file.write_text(json.dumps({**manifest, **change}))
    before = tree(ix)
    for opener in (lambda: Index.open(ix), lambda: Index.open_writer(ix, INFO), lambda: Index.open_writer(ix, None)):
        with pytest.raises(IndexStoreError):
            opener()
    assert tree(ix) == before


def test_a_manifest_missing_a_key_is_one_line_in_the_cli(tmp_path):
    ix = make_index(tmp_path / "ix")
    file = ix / MANIFEST_FILE
    manifest = json.loads(file.read_text())
    del manifest["dim"]
    file.write_text(json.dumps(manifest))
    one_line_error(colrag("status", "--index", ix), "dim")
