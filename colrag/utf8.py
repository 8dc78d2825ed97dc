"""Strings colrag stores (the catalog) or writes as JSON are valid UTF-8 (issue 15 item 15).

A file name that is not UTF-8 (written by a Latin-1 system) reaches Python with surrogate
escapes (os.fsdecode), and so do some of mupdf's messages (a font name in a warning); SQLite
and a UTF-8 stdout refuse them. `text` writes each byte that was not UTF-8 as `\\xNN` (as
cli/output.printable shows it), other lone surrogates as `\\udNNN`; valid text is unchanged.
`fs_path` finds the file such a stored name came from again.
"""

from __future__ import annotations

import os
import re

_BYTE_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")


def text(value: str) -> str:
    """`value` as valid UTF-8 text (unchanged when it already is)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")  # the bytes os.fsdecode was given
    except UnicodeEncodeError:  # surrogates that do not stand for bytes
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def fs_path(stored: str) -> str:
    """The file a path stored through `text` names: itself when it exists, else the path with
    its `\\xNN` escapes turned back into bytes when that one exists, else `stored`."""
    if "\\x" not in stored or os.path.lexists(stored):
        return stored
    original = os.fsdecode(_BYTE_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), os.fsencode(stored)))
    return original if os.path.lexists(original) else stored


def texts(obj: object) -> object:
    """Every string inside lists, tuples and dicts (keys included) made valid UTF-8 by `text`."""
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, dict):
        return {texts(k): texts(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [texts(v) for v in obj]
    return obj
