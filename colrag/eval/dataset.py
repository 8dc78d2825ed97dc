"""The eval dataset: the BEIR / ViDoRe layout `colrag eval` reads, loaded and checked.

    DATASET/
        corpus/          PDFs and/or page images (PNG, JPEG, TIFF; also XPS, EPUB, CBZ); sub-folders allowed
        queries.jsonl    one {"_id": "q1", "text": "..."} per line
        qrels.tsv        query-id <TAB> corpus-id <TAB> score   (a header line is allowed)

A corpus id names one page: `<file name>#<page>`, the file's path relative to corpus/
(with "/" between folders) and its 1-based page number (`report.pdf#3`; an image is
`scan.png#1`). A qrels score > 0 marks the page relevant, with that gain in nDCG;
0 (or a page not listed) is not relevant. Queries without a relevant page are skipped
(as BEIR's evaluation does); the others are scored and averaged.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..render import DOCUMENT_SUFFIXES, KINDS_TEXT

CORPUS_DIR = "corpus"
QUERIES_FILE = "queries.jsonl"
QRELS_FILE = "qrels.tsv"


@dataclass(frozen=True)
class Dataset:
    root: Path
    corpus: Path  # absolute
    files: dict[str, Path]  # corpus file name (relative to corpus/, "/"-separated) -> absolute path
    queries: dict[str, str]  # query id -> text, in file order
    qrels: dict[str, dict[str, float]]  # query id -> {corpus id: score}

    @property
    def judged_queries(self) -> list[str]:
        """Query ids with at least one relevant page, in queries.jsonl order."""
        return [q for q in self.queries if any(s > 0 for s in self.qrels.get(q, {}).values())]


def parse_corpus_id(corpus_id: str) -> tuple[str, int]:
    """`report.pdf#3` -> ("report.pdf", 3); InputError unless it is `<file name>#<page >= 1>`."""
    name, sep, page = corpus_id.rpartition("#")
    if not sep or not name or not page.isdigit() or int(page) < 1:
        raise InputError(
            f"corpus id {corpus_id!r} is not <file name>#<page> with a 1-based page number (e.g. report.pdf#3)"
        )
    return name, int(page)


def corpus_id(name: str, page: int) -> str:
    return f"{name}#{page}"


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Read and check a dataset folder; every problem is one InputError line naming the file and line."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(
            f"no dataset folder at {root}: expected {CORPUS_DIR}/, {QUERIES_FILE} and {QRELS_FILE} in it "
            "(see docs/EVAL.md)"
        )
    corpus = root / CORPUS_DIR
    missing = [
        n
        for n, p in ((CORPUS_DIR + "/", corpus), (QUERIES_FILE, root / QUERIES_FILE), (QRELS_FILE, root / QRELS_FILE))
        if not p.exists()
    ]
    if missing:
        raise InputError(f"{root} is not an eval dataset: it lacks {', '.join(missing)} (see docs/EVAL.md)")
    if not corpus.is_dir():
        raise InputError(f"{corpus} is not a folder")
    corpus = Path(os.path.abspath(corpus))
    files: dict[str, Path] = {}
    for dirpath, dirs, names in os.walk(corpus):
        dirs.sort()
        for n in sorted(names):
            if n.lower().endswith(DOCUMENT_SUFFIXES):
                path = Path(dirpath) / n
                files[path.relative_to(corpus).as_posix()] = path
    if not files:
        raise InputError(f"{corpus} holds no PDF or page image (colrag indexes {KINDS_TEXT})")
    queries = _read_queries(root / QUERIES_FILE)
    qrels = _read_qrels(root / QRELS_FILE, queries, files)
    return Dataset(root=root, corpus=corpus, files=files, queries=queries, qrels=qrels)


def _read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("_id") in (None, ""):
                raise InputError(f'{path} line {n}: expected {{"_id": "...", "text": "..."}}')
            qid = str(row["_id"])
            if qid in queries:
                raise InputError(f"{path} line {n}: query id {qid!r} appears twice")
            if not row["text"].strip():
                raise InputError(f"{path} line {n}: query {qid!r} has an empty text")
            queries[qid] = row["text"]
    if not queries:
        raise InputError(f"{path} holds no query")
    return queries


def _read_qrels(path: Path, queries: dict[str, str], files: dict[str, Path]) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            if n == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue  # the BEIR header
            if len(parts) != 3:
                raise InputError(
                    f"{path} line {n}: expected query-id<TAB>corpus-id<TAB>score, got {len(parts)} field(s)"
                )
            qid, cid, raw_score = (p.strip() for p in parts)
            try:
                score = float(raw_score)
            except ValueError:
                raise InputError(f"{path} line {n}: score {raw_score!r} is not a number") from None
            if not math.isfinite(score) or score < 0:
                raise InputError(f"{path} line {n}: score {raw_score!r} must be a number >= 0")
            if qid not in queries:
                raise InputError(f"{path} line {n}: query id {qid!r} is not in {QUERIES_FILE}")
            try:
                name, _ = parse_corpus_id(cid)
            except InputError as exc:
                raise InputError(f"{path} line {n}: {exc}") from None
            if name not in files:
                raise InputError(f"{path} line {n}: {name!r} is not a file of {CORPUS_DIR}/")
            qrels.setdefault(qid, {})[cid] = score
    return qrels
