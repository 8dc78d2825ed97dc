"""One writer per index: an fcntl lock on `<index>/write.lock` holding the writer's pid.

The lock dies with its process (kill -9 included), so a crashed writer never leaves
an index locked. Readers never take it: SQLite WAL and read-only memmaps let
searches run while a writer appends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import IndexStoreError

LOCK_FILE = "write.lock"


class WriterLock:
    def __init__(self, index_path: Path):
        self.index_path = index_path
        self.path = index_path / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        try:  # O_NOFOLLOW: a write.lock that is a link to another file must not get truncated
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise IndexStoreError(f"cannot open {self.path} for writing: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise IndexStoreError(
                f"index {self.index_path} is being written by another colrag process (pid {pid}); "
                "wait for it to finish (searches still work meanwhile)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
