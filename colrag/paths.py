"""Where colrag keeps its data. One function decides; env vars and flags override.

Default home: the current project checkout if it has `models/` and `indexes/` folders
(developer use), otherwise the platform data dir (~/.local/share/colrag).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

HOME_ENV = "COLRAG_HOME"
MODELS_ENV = "COLRAG_MODELS"
DEFAULT_INDEX_NAME = "default"


def _checkout_root() -> Path | None:
    """The source checkout this package runs from, if it has the models/ and indexes/ folders."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "models").is_dir() and (root / "indexes").is_dir():
        return root
    return None


def colrag_home() -> Path:
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    checkout = _checkout_root()
    if checkout is not None:
        return checkout
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "colrag"


def models_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser()
    return colrag_home() / "models"


def retriever_dir(explicit_bundle: str | os.PathLike | None = None, models: str | os.PathLike | None = None) -> Path:
    if explicit_bundle:
        return Path(explicit_bundle).expanduser()
    return models_dir(models) / "retriever"


def generator_dir(explicit_bundle: str | os.PathLike | None = None, models: str | os.PathLike | None = None) -> Path:
    if explicit_bundle:
        return Path(explicit_bundle).expanduser()
    return models_dir(models) / "generator"


def index_dir(name_or_path: str | os.PathLike | None = None) -> Path:
    """`--index` takes a name (a folder under COLRAG_HOME/indexes) or a path."""
    value = str(name_or_path) if name_or_path else DEFAULT_INDEX_NAME
    if value.startswith(("qdrant:", "qdrant+edge:")):
        raise InputError(
            f"--index {value}: this command works on a local index only; a Qdrant index is used by index, "
            "search, ask, status and remove (docs/SCALE.md)"
        )
    if os.sep in value or "/" in value or value.startswith("."):
        return Path(value).expanduser()
    if not value.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"invalid index name {value!r}: use letters, digits, '-' and '_' (or give a path)")
    return colrag_home() / "indexes" / value


def prefix_cache_dir() -> Path:
    """Where `colrag ask` keeps the k/v of recently read pages (a bounded, disposable cache)."""
    return colrag_home() / "cache" / "prefixes"


def output_dir() -> Path:
    """Where `search --explain` and `ask --show` write their PNGs unless given --out DIR.

    One folder, replaced file by file (a name says the page and the rank), never the
    current directory or the temp dir: delete it whenever you like."""
    return colrag_home() / "out"
