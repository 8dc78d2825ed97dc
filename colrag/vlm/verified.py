"""Content checks of model bundles that stay fast after the first load.

A model file of the right size can still be corrupt (a flipped block on disk, a bad copy,
an edit): loaded as is, it would rank or answer with garbage while the bundle id, which
hashes the *manifest's* checksums, stays the same. So the first load of a bundle hashes
every file (sha256) against the manifest, then records a stamp per file: device, inode,
size, mtime_ns and ctime_ns. Later loads re-hash only files whose stamp changed. Any
write to a file changes its ctime (which, unlike mtime, cannot be set back by `touch`),
and a copy has another inode, so a changed file is always hashed again; what a stamp
cannot see is a change made by something that bypasses the file system (a failing disk
returning other bytes for an unchanged inode): `colrag models verify` re-hashes
everything for that.

Once loaded, a bundle's content is what its manifest says, so its bundle id is a
*verified* identity: an index, which records the id of the retriever that wrote its
vectors, refuses a retriever whose files were changed and re-manifested (another id),
and a corrupted one never loads.

Where the stamps live: `$COLRAG_HOME/cache/verified/<sha256 of the bundle's real
path>.json`, not inside the bundle folder. Bundles are often shared read-only (installed
once for several users, or on a read-only mount) where a stamp could not be written; a
bundle folder stays exactly what its manifest lists; and a stamp is one machine's
knowledge about files, like a cache: deleting it costs one re-hash. A stamp is keyed by
the bundle's path and holds the sha256 of the manifest it was verified against, so a
re-export or a copy elsewhere is verified again. Stamps are written atomically; one that
cannot be read or written only costs speed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..fsutil import atomic_write_json
from .bundle import MANIFEST, sha256_file

STAMP_FORMAT = 1
ANNOUNCE_BYTES = 256 << 20  # say so on stderr when a first load hashes more than this (about 0.2 s/GB)


def stamps_dir() -> Path:
    from ..paths import colrag_home

    return colrag_home() / "cache" / "verified"


def _stamp_path(bundle_dir: Path) -> Path:
    return stamps_dir() / f"{hashlib.sha256(str(bundle_dir.resolve()).encode()).hexdigest()[:32]}.json"


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_stamps(path: Path, bundle_dir: Path, manifest_sha: str) -> dict[str, list[int]]:
    """The file stamps recorded for this bundle and manifest; {} when there are none or they do not apply."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("format") != STAMP_FORMAT
        or data.get("bundle") != str(bundle_dir.resolve())
        or data.get("manifest_sha256") != manifest_sha
        or not isinstance(data.get("files"), dict)
    ):
        return {}
    return {
        rel: stamp
        for rel, stamp in data["files"].items()
        if isinstance(stamp, list) and len(stamp) == 5 and all(isinstance(v, int) for v in stamp)
    }


def verify_with_stamps(bundle_dir: Path, manifest: dict[str, Any], *, trust_stamps: bool = True) -> None:
    """Check every file of a bundle (already through `load_manifest`) against its manifest sha256.

    Files whose stamp matches the one recorded at their last successful check are not
    re-hashed (unless trust_stamps is False). A mismatch raises BundleError naming the file.
    """
    bundle_dir = Path(bundle_dir)
    try:
        manifest_sha = sha256_file(bundle_dir / MANIFEST)
    except OSError as exc:
        raise BundleError(f"cannot read {bundle_dir / MANIFEST}: {exc.strerror or exc}") from exc
    stamp_file = _stamp_path(bundle_dir)
    known = _read_stamps(stamp_file, bundle_dir, manifest_sha) if trust_stamps else {}
    stamps: dict[str, list[int]] = {}
    todo: list[tuple[str, Path, list[int]]] = []
    for rel in manifest["files"]:
        path = bundle_dir / rel
        stamp = _file_stamp(path)
        if known.get(rel) == stamp:
            stamps[rel] = stamp
        else:
            todo.append((rel, path, stamp))
    if not todo:
        return
    total = sum(stamp[2] for _, _, stamp in todo)
    if total >= ANNOUNCE_BYTES:
        print(f"verifying {bundle_dir} ({total / 1e9:.1f} GB, once) ...", file=sys.stderr, flush=True)
    for rel, path, stamp in todo:
        if sha256_file(path) != manifest["files"][rel]["sha256"]:
            raise BundleError(
                f"{bundle_dir}: {rel} does not match its checksum (corrupt or modified); "
                "re-export or reinstall the bundle"
            )
        if _file_stamp(path) == stamp:  # not changed while it was being hashed
            stamps[rel] = stamp
    try:
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            stamp_file,
            {
                "format": STAMP_FORMAT,
                "bundle": str(bundle_dir.resolve()),
                "manifest_sha256": manifest_sha,
                "files": stamps,
            },
        )
    except OSError:
        pass  # a home that cannot be written only means hashing again next time
