"""The failure list next to a cache: ``<cache>.failed.tsv``, one ``key<TAB>reason`` per line.

Written by extraction and by the merge of shards; the cache itself stores the same list. Each
line is one record whatever a key or reason holds: a backslash, tab, newline, carriage return or
other control character (and the Unicode line and paragraph separators) is escaped as Python
writes it in a string literal (``\\\\``, ``\\t``, ``\\n``, ``\\r``, ``\\x1b``, ``\\u2028``);
:func:`read_failed_list` undoes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import unicodedata

__all__ = [
    "escape_field",
    "is_control",
    "read_failed_list",
    "unescape_field",
    "write_failed_list",
]

_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPED = re.compile(r"\\(\\|t|n|r|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def is_control(ch: str) -> bool:
    """Whether ``ch`` is a control character or a line/paragraph separator."""
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    if not is_control(ch):
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_field(text: str) -> str:
    """``text`` on one line and without tabs: backslash and control characters escaped."""
    return "".join(map(_escape_char, text))


def unescape_field(text: str) -> str:
    """The inverse of :func:`escape_field`."""

    def one(m: re.Match) -> str:
        s = m.group(1)
        return {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}.get(s) or chr(int(s[1:], 16))

    return _ESCAPED.sub(one, text)


def write_failed_list(output: str, failed: list) -> str | None:
    """Write ``failed`` (``[(key, reason)]``) next to the cache ``output`` and return its path;
    with no failures, remove an old list and return None."""
    path = output + ".failed.tsv"
    if not failed:
        with contextlib.suppress(OSError):
            os.remove(path)
        return None
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n", errors="surrogateescape") as fh:
        fh.write("key\treason\n")
        for k, r in failed:
            fh.write(f"{escape_field(k)}\t{escape_field(r)}\n")
    os.replace(tmp, path)
    return path


def read_failed_list(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``[(key, reason)]`` of a failure list written by :func:`write_failed_list`."""
    with open(path, encoding="utf-8", newline="\n") as fh:
        lines = fh.read().split("\n")
    return [tuple(map(unescape_field, line.split("\t", 1))) for line in lines[1:] if line]
