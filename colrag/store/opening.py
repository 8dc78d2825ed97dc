"""Opening an index folder: a reader (no lock) or the one writer (lock, upgrade, repair, create).

`Index.open` and `Index.open_writer` call these; they hold the checks that keep colrag from
touching a folder that is not its own (a foreign folder, a symlinked sub-folder, a missing
catalog) and the in-place upgrade of an older index (colrag.store.migrate).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IndexStoreError
from ..fsutil import atomic_write_json
from ..render import RenderOptions
from . import catalog as cat
from . import features as pf
from . import migrate
from .folder import not_creation_leftovers, refuse_links
from .lock import WriterLock
from .manifest import MANIFEST_FILE, SCHEMA_VERSION, RetrieverInfo, check_retriever, manifest_for, read_manifest
from .segments import SEGMENTS_DIR
from .writer import Writer

if TYPE_CHECKING:
    from .index import Index


def open_reader(cls: type[Index], path: Path, retriever: RetrieverInfo | None = None) -> Index:
    """Index.open: no lock, the catalog read-only; an older index is upgraded first (upgrade_for_reader)."""
    path = Path(path)
    manifest = read_manifest(path, upgradable=True)
    file = path / cat.CATALOG_FILE
    conn = cat.connect(file, readonly=True)  # never creates or changes a file
    try:
        older = 0 < cat.check_version(conn) < cat.latest_version() or manifest["schema_version"] < SCHEMA_VERSION
    finally:
        conn.close()
    if older:
        upgrade_for_reader(path)
        manifest = read_manifest(path)
    if retriever is not None:
        check_retriever(path, manifest, retriever)
    conn = cat.connect(file, readonly=True)
    try:
        cat.check_schema(conn)
    except BaseException:
        conn.close()
        raise
    return cls(path, manifest, conn, None)


def open_writer(
    cls: type[Index],
    path: Path,
    retriever: RetrieverInfo | None,
    render: RenderOptions | None = None,
    *,
    dim: int | None = None,
    page_features: bool = True,
) -> Index:
    """Index.open_writer: lock, check the folder is ours (or new), upgrade, repair, create the manifest last."""

    if path.exists() and not path.is_dir():
        raise IndexStoreError(f"{path} is a file, not an index folder")
    fresh = not (path / MANIFEST_FILE).is_file()
    if fresh and retriever is None and not dim:
        read_manifest(path)  # raises the "no index" error
    if fresh and path.is_dir():
        strangers = not_creation_leftovers(path)
        if strangers:
            raise IndexStoreError(
                f"{path} exists and is not a colrag index (it holds {', '.join(strangers[:3])}); "
                "colrag creates an index only in a new or empty folder: choose another --index"
            )
    if not fresh:
        read_manifest(path, upgradable=True)  # a damaged manifest is refused before anything is touched
        refuse_links(path)
        catalog = path / cat.CATALOG_FILE
        if not catalog.is_file() or catalog.stat().st_size == 0:
            raise IndexStoreError(
                f"index {path} is damaged: its {cat.CATALOG_FILE} is missing or empty, so nothing says which "
                "vectors are valid; move the folder aside and run `colrag index` into a new --index"
            )
    path.mkdir(parents=True, exist_ok=True)
    (path / SEGMENTS_DIR).mkdir(exist_ok=True)
    lock = WriterLock(path).acquire()
    conn = None
    try:
        if fresh:
            manifest = manifest_for(retriever, render or RenderOptions(), dim)
        else:
            manifest = read_manifest(path, upgradable=True)
            if retriever is not None:
                check_retriever(path, manifest, retriever)
            if dim and int(manifest["dim"]) != dim:
                raise IndexStoreError(f"index {path} holds {manifest['dim']}-d vectors, not {dim}-d ones")
        conn = cat.connect(path / cat.CATALOG_FILE)
        if 2 <= cat.check_version(conn) < cat.FAISS_VERSION or (
            not fresh and manifest["schema_version"] < SCHEMA_VERSION
        ):
            manifest = migrate.upgrade(path, conn, manifest)  # files first, then the catalog's migration 3
        cat.migrate(conn)
        features = None
        if page_features:
            current = pf.manifest_info(manifest)
            features = current if retriever is None else pf.features_entry(retriever, current)
        if features is not None and pf.manifest_info(manifest) is None:
            manifest = {**manifest, "page_features": features}
            if not fresh:  # an older index gains features for the pages indexed from now on
                atomic_write_json(path / MANIFEST_FILE, manifest)
        if fresh:  # the manifest is written last: its presence means the index exists
            atomic_write_json(path / MANIFEST_FILE, manifest)
        index = cls(path, manifest, conn, lock)
        index.writer = Writer(index)
        index.writer.repair()
        info = pf.manifest_info(manifest)
        if info is not None:
            index.repair_notes = pf.repair(
                conn, path / pf.FEATURES_DIR, info["hidden_size"], info["encoding"], cat.transaction
            )
        if features is not None:
            index._features = pf.FeatureWriter(path / pf.FEATURES_DIR, features["hidden_size"], features["encoding"])
        return index
    except BaseException:
        if conn is not None:
            conn.close()
        lock.release()
        raise


def _peek(path: Path) -> Any:
    """A context giving True when the index at path is already of the current format."""
    from contextlib import closing, contextmanager

    @contextmanager
    def peek() -> Any:
        with closing(cat.connect(path / cat.CATALOG_FILE, readonly=True)) as conn:
            yield (
                cat.check_version(conn) == cat.latest_version()
                and read_manifest(path, upgradable=True)["schema_version"] == SCHEMA_VERSION
            )

    return peek()


def upgrade_for_reader(path: Path) -> None:
    """Bring an older index up to date for a reader: the upgrade, under the writer lock."""
    try:
        from .index import Index

        Index.open_writer(path, None).close()
    except IndexStoreError as exc:
        if "being written by another" in str(exc):
            with _peek(path) as current:  # a writer (which upgrades on open) may hold the lock
                if current:
                    return
        raise IndexStoreError(
            f"index {path} needs a one-time upgrade to this colrag's format, and {exc}: run `colrag index` on it "
            "(with write access) once"
        ) from None
