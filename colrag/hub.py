"""Checkpoints from the Hugging Face Hub for `colrag models install`: pinned revisions fetched
into huggingface_hub's own cache (resumable, shared, HF_HUB_OFFLINE=1 reads only the cache),
only the files the exporters read (ALLOW_PATTERNS), every LFS blob's sha256 checked."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ColragError
from .vlm.bundle import sha256_file

if TYPE_CHECKING:
    from .install import ModelSpec

# The checkpoint files the exporters read (config, safetensors, tokenizer and chat template).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer*"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _require_hub():
    try:
        import huggingface_hub  # noqa: F401  (is it installed?)
    except ImportError:
        raise ColragError("downloading models needs huggingface_hub: pip install 'colrag[install]'") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


# What to do without the Hub: convert checkpoint folders already on disk (offline means no
# download at all: HF_HUB_OFFLINE=1 uses only the huggingface_hub cache, --*-from only local folders).
LOCAL_CHECKPOINTS_HINT = (
    "or convert checkpoint folders you already have (a download or `save_pretrained` output, with config.json), "
    "which needs no network: `colrag models install --retriever-from DIR --generator-from DIR`"
)


def download(spec: ModelSpec, *, cache_dir: Path | None = None) -> Path:
    """Fetch `spec`'s checkpoint files into the huggingface_hub cache; returns the snapshot folder.

    Resumes partial downloads; with HF_HUB_OFFLINE=1 only the cache is used. Every
    expected failure becomes a one-line ColragError saying what to do.
    """
    _require_hub()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{spec.repo_id} (revision {spec.revision})"
    alternative = LOCAL_CHECKPOINTS_HINT
    offline = hub_offline()
    verb, prep = ("looking up", "in") if offline else ("downloading", "into")
    _log(f"{spec.part}: {verb} {where} {prep} {cache_dir or hub_cache_dir()}")
    try:
        snapshot = snapshot_download(
            spec.repo_id,
            revision=spec.revision,
            allow_patterns=ALLOW_PATTERNS,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
    except LocalEntryNotFoundError as exc:  # offline, unreachable, or an incomplete cached snapshot
        if offline:
            raise ColragError(
                f"offline: HF_HUB_OFFLINE is set, so nothing is downloaded and only the Hugging Face cache "
                f"{cache_dir or hub_cache_dir()} is used, and {where} is not complete there: "
                f"unset HF_HUB_OFFLINE and connect to the internet, {alternative}"
            ) from exc
        raise ColragError(
            f"cannot reach the Hugging Face Hub to download {where}, and the cache does not hold it: "
            "check your connection (or HF_ENDPOINT / proxy settings) and run again — finished files are kept "
            f"— {alternative}"
        ) from exc
    except GatedRepoError as exc:
        raise ColragError(
            f"{spec.repo_id} is gated: accept its terms on the Hub and log in (hf auth login), {alternative}"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ColragError(f"{spec.repo_id} has no revision {spec.revision!r} on the Hub: {_first_line(exc)}") from exc
    except RepositoryNotFoundError as exc:
        raise ColragError(f"{spec.repo_id} was not found on the Hub (or needs a token): {_first_line(exc)}") from exc
    except HfHubHTTPError as exc:
        raise ColragError(f"the Hugging Face Hub refused the download of {where}: {_first_line(exc)}") from exc
    except OSError as exc:  # connection dropped for good, disk full, consistency check failed...
        raise ColragError(f"downloading {where} failed: {_first_line(exc)}; run again to resume") from exc
    except Exception as exc:  # httpx errors (proxy, protocol) are not OSErrors
        if exc.__class__.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
            raise ColragError(
                f"downloading {where} failed: {exc.__class__.__name__}: {_first_line(exc)}; run again to resume"
            ) from exc
        raise
    path = Path(snapshot)
    verify_snapshot(path)
    return path


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def verify_snapshot(snapshot: Path) -> int:
    """Re-hash every large-file (LFS) blob of a cached snapshot against its sha256; returns how many.

    In the huggingface_hub cache, a snapshot file is a link to `blobs/<etag>`, and the
    etag of an LFS file is its sha256: a blob damaged on disk or by a bad resume is
    caught here, removed (so that the next run downloads it again), and reported.
    """
    checked = 0
    for file in sorted(snapshot.rglob("*")):
        if not file.is_file():
            continue
        blob = file.resolve()
        if not _SHA256.match(blob.name):
            continue  # a small git file: its etag is a git blob id, not a content hash
        digest = sha256_file(blob)
        if digest != blob.name:
            blob.unlink(missing_ok=True)
            file.unlink(missing_ok=True)
            raise ColragError(
                f"{file.relative_to(snapshot)} was downloaded corrupt (sha256 {digest[:12]}…, "
                f"expected {blob.name[:12]}…); "
                "it was removed: run the install again to download it anew"
            )
        checked += 1
    return checked
