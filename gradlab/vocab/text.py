"""Text that is safe to print to a terminal or a markdown table.

    printable(text)    control characters (C0, DEL, C1) and format characters (bidirectional
                       overrides, zero-width joiners) written as visible escapes: '\x1b' -> '\\x1b'

A config value, a run's folder name or a column of a damaged CSV may hold terminal escape sequences
(`\x1b]0;PWNED\x07\x1b[31m` retitles the window and colours what follows); everything gradlab
prints for a person goes through `printable`. Machine formats keep the bytes: csv quotes them, json
escapes them. No imports beyond the standard library.
"""

from __future__ import annotations

import re
import unicodedata

# C0 controls but tab and newline, DEL and C1: matched fast; format characters (Cf) by category below
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, keep_newlines: bool = True) -> str:
    """`text` with every control or format character written as a visible escape (tab and, unless
    `keep_newlines` is false, newline kept)."""
    text = str(text)
    if not keep_newlines:
        text = text.replace("\n", "\\n")
    if text.isascii():
        return _CONTROL.sub(lambda m: _escaped(m.group()), text)
    return "".join(_escaped(c) if (c not in "\t\n" and unicodedata.category(c) in ("Cc", "Cf")) else c for c in text)
