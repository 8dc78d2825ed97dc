"""Shared by the tests that run colrag as a user would (a subprocess) and check the user's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_colrag(
    *args: object,
    home: Path | None = None,
    env_extra: dict[str, str] | None = None,
    stdin=None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """`python -m colrag ARGS` from the checkout, COLRAG_DEBUG unset (so errors are one line), stdin
    empty unless given; home: COLRAG_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "COLRAG_DEBUG"}
    if home is not None:
        env["COLRAG_HOME"] = str(home)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "colrag", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
    )


def user_files(folder: Path, files: dict[str, bytes]) -> dict[Path, bytes]:
    """Write files colrag did not create (relative path -> bytes); returns their paths and contents."""
    out = {}
    for rel, data in files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[p] = data
    return out


def assert_untouched(files: dict[Path, bytes]) -> None:
    for p, data in files.items():
        assert p.is_file() and not p.is_symlink(), f"{p} is gone"
        assert p.read_bytes() == data, f"{p} was changed"
