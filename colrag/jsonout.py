"""The `--json` documents of index, status, search, ask and eval: one schema (docs/JSON.md).

Every document is an object with `"schema"` (JSON_SCHEMA: bumped when a field changes
meaning or goes away; new fields may appear without a bump) and `"command"`. The same
thing has the same shape in every command:

    page      {"file": str, "page": int}                  1-based page of an indexed file
    hit       {"file": str, "page": int, "score": float}  a ranked page (search results, ask sources)
    failure   {"file": str, "page": int | null, "reason": str}   page null: the whole file
    index     {"path": str, ...counts}                     the index folder, with what the command knows
    retriever {"name": str, "bundle_id": str, ...}
"""

from __future__ import annotations

import json
from typing import Any

from .utf8 import texts

JSON_SCHEMA = 1


def document(command: str, **fields: Any) -> dict[str, Any]:
    return {"schema": JSON_SCHEMA, "command": command, **fields}


def hit(file: str, page: int, score: float) -> dict[str, Any]:
    return {"file": str(file), "page": int(page), "score": round(float(score), 4)}


def failure(file: str, page: int | None, reason: str) -> dict[str, Any]:
    return {"file": str(file), "page": None if page is None else int(page), "reason": str(reason)}


def dumps(doc: dict[str, Any]) -> str:
    """The document as JSON text; strings that are not valid UTF-8 (a file name with bytes that are not)
    are written as colrag.utf8.text writes them, as the catalog stores them."""
    return json.dumps(texts(doc), indent=2, ensure_ascii=False)
