"""Triplet files: read and write triplets of image names, with line-exact errors.

Triplets from class folders live in :mod:`tripletsk.folders`, triplets from labels and
P x K batches in :mod:`tripletsk.mining` (``sample_label_triplets`` and ``pk_batches`` are
re-exported here).
"""

from __future__ import annotations

import codecs
import difflib
import os
import re
import shlex
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import numpy as np

from tripletsk.errors import TripletDataError, TripletFileError, UserError  # noqa: F401 (re-exported)
from tripletsk.mining import pk_batches, sample_label_triplets
from tripletsk.outputs import writing

__all__ = [
    "TripletDataError",
    "TripletFile",
    "TripletFileError",
    "pk_batches",
    "read_triplets",
    "read_triplets_with_lines",
    "sample_label_triplets",
    "write_triplets",
]

# --------------------------------------------------------------------------------------------
# Triplet files
# --------------------------------------------------------------------------------------------

# Only space and tab separate names: other Unicode spaces (e.g. U+00A0) are part of a name.
_BLANKS = " \t"
_SPLIT = re.compile(r"[ \t]+")
# A comment starts at a '#' at the start of a line or preceded by a space or tab.
_COMMENT = re.compile(r"(?:^|[ \t])#.*$")
_N_SHOWN = 5  # offending lines quoted in one error or warning message


@dataclass(frozen=True)
class TripletFile:
    """Triplets read from a file, with the line each came from.

    Attributes
    ----------
    triplets : ndarray of shape (n_triplets, 3), dtype object
        Image keys (Python ``str``), columns anchor, positive, negative.
    line_numbers : ndarray of shape (n_triplets,), dtype int64
        1-based line number of each triplet in the file.
    path : str
        The file, as it was given; used in messages.
    """

    triplets: np.ndarray
    line_numbers: np.ndarray
    path: str

    def __len__(self) -> int:
        return len(self.triplets)

    def where(self, row: int) -> str:
        """``"<path>, line <n>"`` for triplet ``row``, to point users at a line."""
        return f"{self.path}, line {self.line_numbers[row]}"


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


def _parse_line(line: str) -> list[str]:
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


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with the newline, ``\\r`` and a leading BOM removed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TripletFileError(f"{path}: triplet file not found.") from None
    except IsADirectoryError:
        raise TripletFileError(f"{path}: is a directory, not a triplet file.") from None
    except OSError as exc:
        raise TripletFileError(f"{path}: cannot read triplet file ({exc.strerror}).") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    # Split on "\n" only: str.splitlines would also break names at U+2028, \x0c, ...
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TripletFileError(
                f"{path}, line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                f"column {exc.start + 1}); save the file as UTF-8."
            ) from None
        yield number, text.removesuffix("\r")


def _close_matches(name: str, known: Collection[str]) -> list[str]:
    """Up to 3 known names that look like ``name``, looking in its own folder first."""
    folder = name.rpartition("/")[0]
    nearby = [k for k in known if k.rpartition("/")[0] == folder]
    # A folder's contents are few and the likeliest match; the whole set is the fallback.
    return difflib.get_close_matches(name, nearby, n=3) or difflib.get_close_matches(
        name, known, n=3
    )


def _check_known(result: TripletFile, known_keys: Collection[str]) -> None:
    known = known_keys if isinstance(known_keys, (set, frozenset)) else set(known_keys)
    # One membership test per distinct name, not per occurrence.
    names, inverse = np.unique(result.triplets.astype(str), return_inverse=True)
    is_unknown = np.array([name not in known for name in names.tolist()], dtype=bool)
    if not is_unknown.any():
        return
    bad_cells = np.flatnonzero(is_unknown[inverse.ravel()])
    first_row_of = {}
    for cell in bad_cells.tolist():
        first_row_of.setdefault(str(result.triplets.flat[cell]), cell // 3)
    details = []
    for name, row in list(first_row_of.items())[:_N_SHOWN]:
        matches = _close_matches(name, known)
        hint = f" (did you mean {', '.join(map(repr, matches))}?)" if matches else ""
        details.append(f"line {result.line_numbers[row]}: {name!r}{hint}")
    raise TripletFileError(
        f"{result.path}: {len(first_row_of)} image name(s) not among the {len(known)} known "
        f"images, used {len(bad_cells)} time(s); first: " + "; ".join(details) + "."
    )


def _check_repeats(result: TripletFile, on_self: str) -> None:
    t = result.triplets
    rows = np.flatnonzero((t[:, 0] == t[:, 1]) | (t[:, 0] == t[:, 2]) | (t[:, 1] == t[:, 2]))
    if rows.size == 0 or on_self == "ignore":
        return
    lines = ", ".join(str(n) for n in result.line_numbers[rows[:_N_SHOWN]])
    message = (
        f"{result.path}: {rows.size} triplet(s) repeat an image (anchor equal to positive or "
        f"negative, or positive equal to negative), at line(s) {lines}"
        f"{', ...' if rows.size > _N_SHOWN else ''}; such triplets teach nothing."
    )
    if on_self == "error":
        raise TripletFileError(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def read_triplets_with_lines(
    path: str | os.PathLike,
    known_keys: Collection[str] | None = None,
    *,
    on_self: str = "warn",
) -> TripletFile:
    """Read a triplet file, keeping the line number of each triplet.

    See :func:`read_triplets` for the format and the checks; this variant returns a
    :class:`TripletFile` so that later messages can point at the line of a triplet.

    Parameters
    ----------
    path : str or path-like
        The triplet file.
    known_keys : collection of str, default=None
        Image keys that exist (e.g. the keys of the feature cache). Names not among them are
        an error. ``None`` skips the check.
    on_self : {"warn", "error", "ignore"}, default="warn"
        What to do with triplets that repeat an image.

    Returns
    -------
    TripletFile

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tripletsk.triplets import read_triplets_with_lines
    >>> path = Path(tempfile.mkdtemp()) / "train.txt"
    >>> _ = path.write_text("# header\\na.jpg b.jpg c.jpg\\n")
    >>> tf = read_triplets_with_lines(path)
    >>> tf.triplets.tolist(), tf.line_numbers.tolist()
    ([['a.jpg', 'b.jpg', 'c.jpg']], [2])
    """
    if on_self not in ("warn", "error", "ignore"):
        raise ValueError(f"on_self must be 'warn', 'error' or 'ignore'; got {on_self!r}.")
    path = os.fspath(path)
    rows: list[list[str]] = []
    numbers: list[int] = []
    for number, text in _read_lines(path):
        try:
            names = _parse_line(text)
        except ValueError as exc:
            raise TripletFileError(f"{path}, line {number}: {exc}.") from None
        if not names:
            continue
        if len(names) != 3:
            raise TripletFileError(
                f"{path}, line {number}: expected 3 names (anchor positive negative), "
                f"found {len(names)}."
            )
        rows.append(names)
        numbers.append(number)
    if not rows:
        raise TripletFileError(f"{path}: no triplets found (the file is empty or all comments).")
    triplets = np.empty((len(rows), 3), dtype=object)
    triplets[:] = rows
    result = TripletFile(triplets, np.asarray(numbers, dtype=np.int64), path)
    if known_keys is not None:
        _check_known(result, known_keys)
    _check_repeats(result, on_self)
    return result


def read_triplets(
    path: str | os.PathLike,
    known_keys: Collection[str] | None = None,
    *,
    on_self: str = "warn",
) -> np.ndarray:
    """Read a triplet file: one ``anchor positive negative`` triplet of image names per line.

    Names are image keys: paths relative to the image root, with ``/`` separators. The
    format (details in ``docs/formats.md``):

    - Names are separated by spaces or tabs; exactly 3 names per line.
    - A line that contains a TAB (and no ``"``) is split on tabs only, so names may contain
      spaces: ``my image.jpg<TAB>b.jpg<TAB>c.jpg``. Spaces around each field are dropped.
    - A line that contains a double quote is split like ``shlex.split(line, posix=True)``,
      except that ``'`` is an ordinary character: ``"my image.jpg" b.jpg c.jpg``. Inside
      quotes, ``\\"`` and ``\\\\`` stand for ``"`` and ``\\``.
    - ``#`` starts a comment at the start of a line or after a space or tab, outside quotes
      (``a#1.jpg`` is a name; quote a name that starts with ``#`` or contains `` #``).
    - Blank lines, Windows line ends (CRLF) and a UTF-8 byte order mark are accepted.

    Parameters
    ----------
    path : str or path-like
        The triplet file, UTF-8 encoded.
    known_keys : collection of str, default=None
        Image keys that exist, e.g. the keys of the feature cache. If given, names not among
        them raise one error that counts them and shows the first few with their line and the
        nearest known names. A ``set`` avoids a copy.
    on_self : {"warn", "error", "ignore"}, default="warn"
        What to do with triplets that repeat an image (anchor equal to positive or negative,
        or positive equal to negative): they carry no information. ``"warn"`` issues one
        ``UserWarning`` with their count and first line numbers.

    Returns
    -------
    triplets : ndarray of shape (n_triplets, 3), dtype object
        Python ``str`` names: an object array keeps each name at its own length, whereas a
        fixed-width ``str`` array would pad every name to the longest one.

    Raises
    ------
    TripletFileError
        A missing or unreadable file, a line that is not UTF-8, a line without exactly 3
        names, an unclosed quote, a file without triplets, or unknown names. The message
        names the file and the line, e.g. ``train.txt, line 7: expected 3 names (anchor
        positive negative), found 2.``

    See Also
    --------
    read_triplets_with_lines : the same, keeping line numbers.
    write_triplets : the inverse.

    Examples
    --------
    >>> import os, tempfile
    >>> from tripletsk.triplets import read_triplets
    >>> path = os.path.join(tempfile.mkdtemp(), "train.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("cat/1.jpg cat/2.jpg dog/1.jpg  # a comment\\n")
    ...     _ = f.write('"my cat.jpg" cat/1.jpg dog/1.jpg\\n')
    >>> read_triplets(path)
    array([['cat/1.jpg', 'cat/2.jpg', 'dog/1.jpg'],
           ['my cat.jpg', 'cat/1.jpg', 'dog/1.jpg']], dtype=object)
    """
    return read_triplets_with_lines(path, known_keys, on_self=on_self).triplets


def _needs_quotes(name: str) -> bool:
    """Whether a name would not survive being written bare on a space-separated line."""
    return not name or name.startswith("#") or any(c in name for c in ' \t"')


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_triplets(path: str | os.PathLike, triplets) -> None:
    """Write triplets of image names in the format :func:`read_triplets` reads.

    Lines are ``anchor positive negative``, space-separated, UTF-8, ``\\n`` line ends. If any
    name on a line contains a space, tab, ``"`` or starts with ``#``, all three names on that
    line are written in double quotes (with ``"`` and ``\\`` escaped), so that reading the
    file back gives the same names.

    Parameters
    ----------
    path : str or path-like
        Output file; replaced if it exists.
    triplets : array-like of shape (n_triplets, 3)
        Image names (``str``); integers are written as their decimal form.

    Raises
    ------
    ValueError
        If the shape is wrong, or a name is empty or contains a line break (no line-based
        format can hold it).

    Examples
    --------
    >>> import os, tempfile
    >>> from tripletsk.triplets import read_triplets, write_triplets
    >>> path = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> write_triplets(path, [["my cat.jpg", "b.jpg", "c.jpg"]])
    >>> open(path).read()
    '"my cat.jpg" "b.jpg" "c.jpg"\\n'
    >>> read_triplets(path).tolist()
    [['my cat.jpg', 'b.jpg', 'c.jpg']]
    """
    triplets = np.asarray(triplets, dtype=object)
    if triplets.ndim != 2 or triplets.shape[1] != 3:
        raise ValueError(f"triplets must have shape (n_triplets, 3); got {triplets.shape}.")
    lines = []
    for row in triplets.tolist():
        names = [str(name) for name in row]
        for name in names:
            if not name or "\n" in name or "\r" in name:
                raise ValueError(f"Cannot write image name {name!r}: empty or has a line break.")
        if any(_needs_quotes(name) for name in names):
            names = [_quote(name) for name in names]
        lines.append(" ".join(names) + "\n")
    # Written whole under a temporary name, then moved in: an interrupted write never leaves
    # half a triplet file where a complete one was, and a file that appeared at ``path``
    # meanwhile is not replaced (tripletsk.outputs).
    with writing(path, "triplet file") as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
