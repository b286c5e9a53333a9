"""Triplet files: read and write triplets of image names, with line-exact errors.

Triplets from class folders live in :mod:`tripletsk.triplets.folders`, triplets from labels and
P x K batches in :mod:`tripletsk.triplets.mining`.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from tripletsk.errors import TripletFileError
from tripletsk.outputs import writing
from tripletsk.triplets.checks import (
    N_SHOWN,
    check_known,
    check_on_self,
    check_repeats,
    repeating_rows,
    unknown_error,
)
from tripletsk.triplets.key_table import KeyTable
from tripletsk.triplets.lines import Block, blocks, parse_block

__all__ = [
    "TripletFile",
    "TripletIndices",
    "read_triplet_indices",
    "read_triplets",
    "read_triplets_with_lines",
    "write_triplets",
]

# --------------------------------------------------------------------------------------------
# Triplet files
# --------------------------------------------------------------------------------------------

#: Distinct unknown names counted before reading stops (their count is then "more than").
_MAX_UNKNOWN = 100_000


class _FromLines:
    """What triplets read from a file share: their count and the line each came from."""

    line_numbers: np.ndarray
    path: str

    def __len__(self) -> int:
        return len(self.line_numbers)

    def where(self, row: int) -> str:
        """``"<path>, line <n>"`` for triplet ``row``, to point users at a line."""
        return f"{self.path}, line {self.line_numbers[row]}"


@dataclass(frozen=True)
class TripletFile(_FromLines):
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


@dataclass(frozen=True)
class TripletIndices(_FromLines):
    """Triplets read from a file as row numbers into a list of keys (:func:`read_triplet_indices`).

    Attributes
    ----------
    indices : ndarray of shape (n_triplets, 3), dtype int32 (int64 for 2**31 keys or more)
        Row of the anchor, positive and negative in the keys.
    line_numbers, path
        As in :class:`TripletFile`.
    """

    indices: np.ndarray
    line_numbers: np.ndarray
    path: str


def _parsed(path: str) -> Iterator[Block]:
    """The triplets of ``path``, a block of lines at a time."""
    for first_line, block in blocks(path):
        yield parse_block(path, first_line, block)


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
    >>> from tripletsk.triplets.files import read_triplets_with_lines
    >>> path = Path(tempfile.mkdtemp()) / "train.txt"
    >>> _ = path.write_text("# header\\na.jpg b.jpg c.jpg\\n")
    >>> tf = read_triplets_with_lines(path)
    >>> tf.triplets.tolist(), tf.line_numbers.tolist()
    ([['a.jpg', 'b.jpg', 'c.jpg']], [2])
    """
    check_on_self(on_self)
    path = os.fspath(path)
    names: list[str] = []
    numbers: list[np.ndarray] = []
    for block in _parsed(path):
        names.extend(map(bytes.decode, block.all_names()))
        numbers.append(block.lines)
    if not names:
        raise TripletFileError(f"{path}: no triplets found (the file is empty or all comments).")
    triplets = np.empty((len(names) // 3, 3), dtype=object)
    triplets[:] = np.array(names, dtype=object).reshape(-1, 3)
    result = TripletFile(triplets, np.concatenate(numbers), path)
    if known_keys is not None:
        check_known(path, triplets, result.line_numbers, known_keys)
    rows = repeating_rows(triplets)
    check_repeats(path, len(rows), result.line_numbers[rows[:N_SHOWN]].tolist(), on_self)
    return result


def read_triplet_indices(
    path: str | os.PathLike, keys: Sequence[str], *, on_self: str = "warn"
) -> TripletIndices:
    """Read a triplet file as row numbers into ``keys``, a block of lines at a time.

    The format, the checks and the errors are those of :func:`read_triplets` with
    ``known_keys=keys``, but names are never held as Python strings: each block of about
    4 MiB is parsed and looked up in ``keys`` at once, so memory is the row numbers (12 bytes
    a triplet, and 8 for its line number) plus one block. The command line reads triplet
    files this way (a 5,000,000-line file: ``benchmarks/README.md``).

    Parameters
    ----------
    path : str or path-like
        The triplet file, UTF-8 encoded.
    keys : sequence of str
        The known image keys, e.g. ``FeatureStore.keys``; the rows returned index them.
    on_self : {"warn", "error", "ignore"}, default="warn"
        As in :func:`read_triplets`: triplets that repeat an image are warned about, refused
        or kept.

    Returns
    -------
    TripletIndices

    Raises
    ------
    TripletFileError
        As :func:`read_triplets`; unknown names are all counted (up to 100,000 distinct
        ones, then reading stops) and the first five named with their line.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "t.txt"
    >>> _ = path.write_text("# anchor positive negative\\nb.jpg a.jpg c.jpg\\n")
    >>> read_triplet_indices(path, ["a.jpg", "b.jpg", "c.jpg"]).indices.tolist()
    [[1, 0, 2]]
    """
    check_on_self(on_self)
    path = os.fspath(path)
    table = KeyTable(keys)
    parts, numbers = [], []
    unknown: dict[str, int] = {}  # name -> first line, in the order met
    uses = repeats = 0
    repeat_lines: list[int] = []
    stopped_at = None
    for block in _parsed(path):
        rows, lines = block.rows(table), block.lines
        bad = rows < 0
        if bad.any():
            uses += int(bad.sum())
            for cell in np.flatnonzero(bad).tolist():
                unknown.setdefault(block.name(cell).decode("utf-8"), int(lines[cell // 3]))
                if len(unknown) > _MAX_UNKNOWN:
                    stopped_at = int(lines[cell // 3])
                    break
            if stopped_at is not None:
                break
        if unknown or not len(rows):
            continue  # (a file with unknown names will be refused: its rows are not kept)
        found = repeating_rows(rows)
        repeats += len(found)
        repeat_lines.extend(lines[found[:N_SHOWN]].tolist())
        parts.append(rows)
        numbers.append(lines)
    if unknown:
        raise unknown_error(path, unknown, uses, keys, stopped_at)
    if not parts:
        raise TripletFileError(f"{path}: no triplets found (the file is empty or all comments).")
    check_repeats(path, repeats, repeat_lines, on_self)
    return TripletIndices(np.concatenate(parts), np.concatenate(numbers), path)


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
    >>> from tripletsk.triplets.files import read_triplets
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
    >>> from tripletsk.triplets.files import read_triplets, write_triplets
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
