"""Text output that a file name cannot forge.

A PDF named "a.pdf\\n1\\t0.9999\\tsecret.pdf\\tpage 1" would print a fake extra result line;
an escape sequence in a name could rewrite the terminal; a name that is not valid UTF-8
(a surrogate escape in Python) would crash the print. `printable` escapes all of them
for text output. JSON output is left exact: json.dumps escapes control characters itself.
"""

from __future__ import annotations

import unicodedata

# Cc: C0/C1 controls (newline, tab, ESC, ...); Cf: format characters such as the bidi
# overrides U+202E that reorder what a terminal shows; Cs: lone surrogates; Zl/Zp: line
# and paragraph separators.
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """`text` with every control, format, separator or surrogate character written as an escape."""
    text = str(text)
    if text.isprintable():  # the common case: nothing to do (isprintable is False for all of the above)
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
            out.append(ch)
        elif ch in _SHORT:
            out.append(_SHORT[ch])
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that was not UTF-8, kept by os.fsdecode
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)
