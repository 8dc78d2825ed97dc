"""What `colrag index` reports: files indexed, skipped, removed and kept; failures and warnings.

`IndexReport.as_dict` is the `index --json` document's body (docs/JSON.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Failure:
    path: str
    page: int | None  # None: the whole file
    reason: str
    previous: bool = False  # recorded by an earlier run (the file is unchanged)

    @property
    def where(self) -> str:
        return self.path if self.page is None else f"{self.path} page {self.page}"

    def __str__(self) -> str:
        if self.previous:
            return f"{self.where}: skipped (failed before: {self.reason})"
        return f"{self.where}: {self.reason}"


@dataclass
class IndexReport:
    files: int = 0
    indexed_files: int = 0
    skipped_files: int = 0
    removed_files: int = 0
    kept_files: int = 0  # gone from the walk, but their folder could not be read (or is empty): kept
    unreadable_folders: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason)
    pages: int = 0  # pages embedded and stored by this run
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def new_failures(self) -> list[Failure]:
        """Failures of this run (the others were recorded by an earlier run for an unchanged file)."""
        return [f for f in self.failures if not f.previous]

    @property
    def ok(self) -> bool:
        """Nothing failed in this run (files known to fail, unchanged and skipped, do not count)."""
        return not self.new_failures

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "indexed_files": self.indexed_files,
            "skipped_files": self.skipped_files,
            "removed_files": self.removed_files,
            "kept_files": self.kept_files,
            "unreadable_folders": [{"folder": f, "reason": r} for f, r in self.unreadable_folders],
            "pages": self.pages,
            "seconds": round(self.seconds, 3),
            "failures": [
                {"file": f.path, "page": f.page, "reason": f.reason, "previous": f.previous} for f in self.failures
            ],
            "warnings": [{"file": f.path, "page": f.page, "reason": f.reason} for f in self.warnings],
        }


class NullProgress:
    def start(self, total_pages: int, files: int) -> None: ...
    def advance(self, pages: int, label: str) -> None: ...
    def finish(self) -> None: ...
