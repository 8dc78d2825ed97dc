"""What an index folder may hold, and which of its names colrag may delete.

colrag deletes or rewrites only names it writes (faiss_io.FAISS_NAME and its temp files,
schema 2's files once upgraded), never follows a link inside an index, and creates an
index only in a new or empty folder (or one an interrupted creation left).
"""

from __future__ import annotations

import re
from contextlib import closing
from pathlib import Path

from ..errors import IndexStoreError
from . import catalog as cat
from . import faiss_io
from .features import FEATURES_DIR
from .lock import LOCK_FILE
from .manifest import MANIFEST_FILE
from .segments import SEGMENTS_DIR

ANN_DIR = "ann"  # schema 2's inverted-file cache (emptied by the upgrade)
OWN_ENTRIES = {MANIFEST_FILE, cat.CATALOG_FILE, SEGMENTS_DIR, ANN_DIR, LOCK_FILE}
_CATALOG_FILES = {cat.CATALOG_FILE, cat.CATALOG_FILE + "-wal", cat.CATALOG_FILE + "-shm"}
# schema 2's files: int8 segments, their codes, the codebook (deleted once the upgrade has committed)
SCHEMA_2_NAME = re.compile(r"^(seg-\d{6,9}\.(i8|codes)|codebook\.npy|codebook\.npy\.tmp)$")
SCHEMA_2_ANN_NAME = re.compile(
    r"^(state\.json|g\d+\.(pages|offsets|entries)\.npy|\.g\d+\.(pages|offsets|entries)\.npy\.tmp)$"
)


def is_own_file(name: str) -> bool:
    """A name colrag writes in vectors/."""
    return bool(faiss_io.FAISS_NAME.match(name) or faiss_io.TEMP_NAME.match(name) or SCHEMA_2_NAME.match(name))


def remove_leftovers(path: Path, referenced: set[str]) -> None:
    """Delete colrag's own files in vectors/ (and schema 2's ann/) that no committed row references."""
    for file in (path / SEGMENTS_DIR).iterdir():
        if not is_own_file(file.name):
            continue  # not ours: left alone (check() notes it)
        if file.is_symlink() or not file.is_file():
            raise IndexStoreError(
                f"{file} is not a regular file: colrag does not follow links inside an index; remove it"
            )
        if file.name not in referenced:
            file.unlink()  # written by a writer that died before (or just after) the commit referencing it
    ann = path / ANN_DIR
    if ann.is_dir() and not ann.is_symlink():
        for file in ann.iterdir():
            if SCHEMA_2_ANN_NAME.match(file.name) and file.is_file() and not file.is_symlink():
                file.unlink()
        if not any(ann.iterdir()):
            ann.rmdir()


def refuse_links(path: Path) -> None:
    """A writer deletes and truncates files in vectors/ and ann/: never through a link."""
    for name in (SEGMENTS_DIR, ANN_DIR, FEATURES_DIR):
        sub = path / name
        if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
            raise IndexStoreError(
                f"{sub} is a link or not a folder: colrag does not write through links inside an index; "
                "replace it with a real folder (or move the index)"
            )


def not_creation_leftovers(path: Path) -> list[str]:
    """Entries of a folder without a manifest that an interrupted `colrag index` did not leave.

    Creating an index writes write.lock, an empty vectors/ and the catalog before the manifest;
    anything else (or one of these names holding something else) means the folder is not ours."""
    strangers = []
    for entry in sorted(path.iterdir()):
        name = entry.name
        if entry.is_symlink():
            strangers.append(name)
        elif (
            (name == SEGMENTS_DIR and entry.is_dir() and not any(entry.iterdir()))
            or (name == LOCK_FILE and entry.is_file() and entry.stat().st_size <= 32)
            or (name in _CATALOG_FILES and entry.is_file() and _empty_catalog(path / cat.CATALOG_FILE))
        ):
            continue
        else:
            strangers.append(name)
    return strangers


def _empty_catalog(file: Path) -> bool:
    """The catalog file is absent, empty, or a colrag catalog with no documents and no segments."""
    if not file.exists() or (file.is_file() and file.stat().st_size == 0):
        return True
    try:
        with closing(cat.connect(file, readonly=True)) as conn:
            if cat.check_version(conn) == 0:
                return True
            return (
                not conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
                and not conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
            )
    except IndexStoreError:
        return False
