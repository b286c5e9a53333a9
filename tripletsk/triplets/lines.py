"""Reading a triplet file in blocks of whole lines (private; the format is in docs/formats.md).

A triplet file can hold millions of lines, so it is never read whole: :func:`blocks` reads
blocks of about 4 MiB of whole lines, and :func:`parse_block` turns each into a
:class:`Block`: the line number of each triplet and its names, as UTF-8 ``bytes``, or for the
command line directly their rows among a cache's keys
(:class:`~tripletsk.triplets.key_table.KeyTable`). A block of plain lines (names separated by
spaces, ``\\n`` or ``\\r\\n`` line ends, no quote, tab or ``#``; what ``write_triplets`` writes for
plain names) is split and checked with NumPy at once; any other block is parsed line by line
(:func:`parse_line`), with the same rules and the same line-exact errors.
"""

from __future__ import annotations

import codecs
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tripletsk.errors import TripletFileError
from tripletsk.triplets.key_table import KeyTable

__all__ = ["BLOCK_BYTES", "Block", "blocks", "parse_block", "parse_line"]

#: Bytes read at a time (rounded to whole lines).
BLOCK_BYTES = 4 << 20
# Only space and tab separate names: other Unicode spaces (e.g. U+00A0) are part of a name.
_BLANKS = " \t"
_SPLIT = re.compile(r"[ \t]+")
# A comment starts at a '#' at the start of a line or preceded by a space or tab.
_COMMENT = re.compile(r"(?:^|[ \t])#.*$")
# Bytes that need the line-by-line rules. bytes.split() splits on b" \t\n\r\x0b\x0c": with
# none of these but b" " and b"\n" left in a block, its fields are exactly the names.
_SPECIAL = (b'"', b"#", b"\t", b"\r", b"\x0b", b"\x0c")


def blocks(path: str, block_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(number of the first line, block)``: the file in blocks of whole lines, each block
    ending with ``\\n`` (one is added to a last line without it); a leading BOM removed.
    ``block_bytes`` defaults to :data:`BLOCK_BYTES`."""
    block_bytes = block_bytes or BLOCK_BYTES
    try:
        f = open(path, "rb")  # closed below; errors name the file
    except FileNotFoundError:
        raise TripletFileError(f"{path}: triplet file not found.") from None
    except IsADirectoryError:
        raise TripletFileError(f"{path}: is a directory, not a triplet file.") from None
    except OSError as exc:
        raise TripletFileError(f"{path}: cannot read triplet file ({exc.strerror}).") from None
    with f:
        line, rest = 1, None
        while True:
            try:
                if rest is None:  # the start: a byte order mark is not part of the first name
                    rest = f.read(len(codecs.BOM_UTF8)).removeprefix(codecs.BOM_UTF8)
                data = f.read(block_bytes)
            except OSError as exc:
                raise TripletFileError(
                    f"{path}: cannot read triplet file ({exc.strerror})."
                ) from None
            if not data:
                break
            data = rest + data
            end = data.rfind(b"\n") + 1
            if end == 0:  # a line longer than a block: read on
                rest = data
                continue
            block, rest = data[:end], data[end:]
            yield line, block
            line += block.count(b"\n")
        if rest:
            yield line, rest + b"\n"


@dataclass
class Block:
    """The triplets of one block: their line numbers, and their names (3 per triplet).

    A plain block keeps its bytes and where each name starts and stops (``data``, ``starts``,
    ``stops``); another keeps its names as a list of UTF-8 bytes (``names``).
    """

    lines: np.ndarray
    names: list[bytes] | None = None
    data: np.ndarray | None = None
    starts: np.ndarray | None = None
    stops: np.ndarray | None = None

    def all_names(self) -> list[bytes]:
        """Every name, in order (3 per triplet)."""
        if self.names is not None:
            return self.names
        return self.data.tobytes().split()

    def name(self, i: int) -> bytes:
        """Name ``i`` (of ``3 * len(lines)``)."""
        if self.names is not None:
            return self.names[i]
        return self.data[self.starts[i] : self.stops[i]].tobytes()

    def rows(self, table: KeyTable) -> np.ndarray:
        """The row of each name among ``table``'s keys, shaped (n_triplets, 3); -1: unknown."""
        if table.vectorized and self.names is None:
            rows = table.rows_of_spans(self.data, self.starts, self.stops)
        else:
            rows = table.rows(self.all_names())
        return rows.reshape(-1, 3)


def parse_block(path: str, first_line: int, block: bytes) -> Block:
    """The triplets of ``block``: blank and comment lines give none.

    Raises :class:`TripletFileError` naming the file and the first bad line.
    """
    plain = block.replace(b"\r\n", b"\n") if b"\r" in block else block
    if not any(byte in plain for byte in _SPECIAL):
        try:
            plain.decode("utf-8")
        except UnicodeDecodeError:
            pass  # the line-by-line reader says which line
        else:
            return _parse_plain(path, first_line, plain)
    return _parse_lines(path, first_line, block)


def _parse_plain(path: str, first_line: int, block: bytes) -> Block:
    """A block whose only separators are ``b" "`` and ``b"\\n"``: found and checked at once."""
    data = np.frombuffer(block, dtype=np.uint8)
    blank = (data == 32) | (data == 10)
    edges = np.flatnonzero(blank[1:] != blank[:-1]) + 1  # where names start and stop
    if not blank[0]:
        edges = np.concatenate(([0], edges))
    starts, stops = edges[0::2], edges[1::2]  # the block ends with b"\n": every name stops
    ends = np.flatnonzero(data == 10)  # one per line
    per_line = np.diff(np.searchsorted(starts, ends), prepend=0)  # names before each end
    bad = np.flatnonzero((per_line != 0) & (per_line != 3))
    if len(bad):
        raise _count_error(path, first_line + int(bad[0]), int(per_line[bad[0]]))
    lines = (first_line + np.flatnonzero(per_line == 3)).astype(np.int64)
    return Block(lines, data=data, starts=starts, stops=stops)


def _parse_lines(path: str, first_line: int, block: bytes) -> Block:
    names: list[bytes] = []
    lines: list[int] = []
    for number, raw in enumerate(block[:-1].split(b"\n"), start=first_line):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TripletFileError(
                f"{path}, line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                f"column {exc.start + 1}); save the file as UTF-8."
            ) from None
        try:
            fields = parse_line(text.removesuffix("\r"))
        except ValueError as exc:
            raise TripletFileError(f"{path}, line {number}: {exc}.") from None
        if not fields:
            continue
        if len(fields) != 3:
            raise _count_error(path, number, len(fields))
        names.extend(name.encode("utf-8") for name in fields)
        lines.append(number)
    return Block(np.asarray(lines, dtype=np.int64), names=names)


def _count_error(path: str, line: int, found: int) -> TripletFileError:
    return TripletFileError(
        f"{path}, line {line}: expected 3 names (anchor positive negative), found {found}."
    )


def _strip_quoted_comment(line: str) -> str:
    """Cut a ``#`` comment from a line that uses double quotes, ignoring ``#`` inside quotes.

    Follows the escapes of :func:`shlex.split` in POSIX mode: outside quotes a backslash
    escapes any character, inside double quotes only ``"`` and ``\\``.
    """
    quoted = False
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\":
            if not quoted or line[i + 1 : i + 2] in ('"', "\\"):
                i += 1  # skip the escaped character
        elif ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted and (i == 0 or line[i - 1] in _BLANKS):
            return line[:i]
        i += 1
    return line


def _split_quoted(line: str) -> list[str]:
    """Split like ``shlex.split(line, posix=True)``, but only ``"`` quotes (``'`` is literal)."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace = _BLANKS
    lexer.whitespace_split = True
    lexer.quotes = '"'
    lexer.commenters = ""  # comments are already cut, with the whitespace rule
    return list(lexer)


def parse_line(line: str) -> list[str]:
    """The names on one decoded line (no newline); ``[]`` for blank and comment lines.

    Raises ``ValueError`` with a short reason for a malformed line.
    """
    if '"' in line:
        line = _strip_quoted_comment(line)
        if not line.strip(_BLANKS):
            return []
        try:
            return _split_quoted(line)
        except ValueError:
            raise ValueError('a double quote (") is not closed') from None
    line = _COMMENT.sub("", line).strip(_BLANKS)
    if not line:
        return []
    if "\t" in line:
        fields = [field.strip(" ") for field in line.split("\t")]
        if "" in fields:
            raise ValueError(
                f"empty name in tab-separated column {fields.index('') + 1} (two tabs in a row?)"
            )
        return fields
    return _SPLIT.split(line)
