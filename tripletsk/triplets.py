"""Triplets: files of image-name triplets, sampling them from labels, P x K batches."""

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
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors
from sklearn.utils import check_array, check_random_state

from tripletsk.errors import UserError


def _class_members(y: np.ndarray) -> list[np.ndarray]:
    """Indices of each class, in order of the sorted unique labels."""
    _, inverse = np.unique(y, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    return np.split(order, np.cumsum(counts)[:-1])


def sample_label_triplets(y, n_triplets: int | None = None, random_state=None) -> np.ndarray:
    """Sample random valid triplets ``(anchor, positive, negative)`` of indices from labels.

    An anchor is any sample whose class has at least two members; its positive is another
    member of its class and its negative a member of another class, both drawn uniformly.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    n_triplets : int, default=None
        How many triplets to draw. ``None`` draws one per eligible anchor, each anchor once.
    random_state : int, RandomState instance or None, default=None
        Controls the draw.

    Returns
    -------
    triplets : ndarray of shape (n_triplets, 3), dtype int64
        Row indices into ``y``.

    Raises
    ------
    ValueError
        If no class has two samples or there is only one class.

    Examples
    --------
    >>> from tripletsk.triplets import sample_label_triplets
    >>> t = sample_label_triplets([0, 0, 1, 1], random_state=0)
    >>> t.shape
    (4, 3)
    """
    y = np.asarray(y)
    rng = check_random_state(random_state)
    members = _class_members(y)
    if len(members) < 2:
        raise ValueError(
            f"Sampling triplets from labels needs at least 2 classes; got {len(members)}."
        )
    _, inverse = np.unique(y, return_inverse=True)
    sizes = np.array([len(m) for m in members])
    eligible = np.flatnonzero(sizes[inverse] >= 2)
    if eligible.size == 0:
        raise ValueError(
            "Sampling triplets from labels needs a class with at least 2 samples; "
            "every class has a single sample."
        )
    if n_triplets is None:
        anchors = rng.permutation(eligible)
    else:
        anchors = rng.choice(eligible, size=n_triplets, replace=True)
    anchor_class = inverse[anchors]
    # Positive: a uniformly drawn other member of the anchor's class.
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate(members)
    position = np.empty(len(y), dtype=np.int64)
    position[flat] = np.arange(len(y)) - np.repeat(starts, sizes)
    offset = rng.randint(0, sizes[anchor_class] - 1)
    offset += offset >= position[anchors]  # skip the anchor itself
    positives = flat[starts[anchor_class] + offset]
    # Negative: a uniformly drawn sample outside the anchor's class.
    pick = rng.randint(0, len(y) - sizes[anchor_class])
    pick += (pick >= starts[anchor_class]) * sizes[anchor_class]
    negatives = flat[pick]
    return np.stack([anchors, positives, negatives], axis=1).astype(np.int64)


def pk_batches(y, p: int, k: int, random_state=None) -> Iterator[np.ndarray]:
    """Yield one epoch of P x K batches: ``p`` classes, up to ``k`` samples from each.

    An epoch visits every sample whose class has at least two members about once: each
    class's members are shuffled and dealt out ``k`` at a time, and each batch takes the next
    deal from ``p`` classes (those with most samples left first, ties broken at random).
    A class with fewer than ``k`` samples left contributes the ones it has, never duplicates:
    a repeated sample would only add zero-distance, trivially easy positives. Classes with a
    single sample never anchor a positive pair, so they are only used as extra negatives,
    mixed in at random. Fewer than ``p`` classes left: the last batches hold fewer classes.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    p : int
        Classes per batch.
    k : int
        Samples per class per batch.
    random_state : int, RandomState instance or None, default=None
        Makes the epoch deterministic.

    Yields
    ------
    batch : ndarray of int64
        Row indices into ``y``, between 2 and ``p * k`` of them, grouped by class.

    Examples
    --------
    >>> from tripletsk.triplets import pk_batches
    >>> [len(b) for b in pk_batches([0, 0, 1, 1, 2, 2], p=2, k=2, random_state=0)]
    [4, 2]
    """
    if p < 1 or k < 2:
        raise ValueError(f"pk_batches needs p >= 1 and k >= 2; got p={p}, k={k}.")
    rng = check_random_state(random_state)
    members = _class_members(np.asarray(y))
    singles = np.concatenate([m for m in members if len(m) == 1] or [np.empty(0, np.int64)])
    queues = [list(rng.permutation(m)) for m in members if len(m) >= 2]
    singles = list(rng.permutation(singles))
    while any(queues):
        left = np.array([len(q) for q in queues])
        candidates = np.flatnonzero(left > 0)
        order = candidates[np.lexsort((rng.random_sample(len(candidates)), -left[candidates]))]
        batch = []
        for c in order[:p]:
            take = queues[c][:k]
            # Never strand one sample: it could not form a positive pair later.
            if len(queues[c]) - len(take) == 1:
                take = queues[c]
            queues[c] = queues[c][len(take) :]
            batch.extend(take)
        if singles:
            batch.extend(singles[:k])
            singles = singles[k:]
        yield np.asarray(batch, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Triplet files
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})

# Only space and tab separate names: other Unicode spaces (e.g. U+00A0) are part of a name.
_BLANKS = " \t"
_SPLIT = re.compile(r"[ \t]+")
# A comment starts at a '#' at the start of a line or preceded by a space or tab.
_COMMENT = re.compile(r"(?:^|[ \t])#.*$")
_N_SHOWN = 5  # offending lines quoted in one error or warning message


class TripletDataError(UserError, ValueError):
    """Unusable triplet data, such as image keys that carry no class folder."""


class TripletFileError(TripletDataError):
    """A triplet file that cannot be used; the message names the file and, if any, the line."""


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
    >>> import os, tempfile
    >>> from tripletsk.triplets import read_triplets_with_lines
    >>> path = os.path.join(tempfile.mkdtemp(), "train.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("# header\\na.jpg b.jpg c.jpg\\n")
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
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)


# --------------------------------------------------------------------------------------------
# Triplets from class folders
# --------------------------------------------------------------------------------------------


def list_image_keys(root: str | os.PathLike) -> np.ndarray:
    """Image files under ``root``, recursively, as sorted keys relative to it with ``/``.

    Image files are recognised by extension, case-insensitively: jpg, jpeg, png, gif, bmp,
    webp, tif, tiff. Hidden files and folders (starting with ``.``) are skipped.

    Examples
    --------
    >>> import os, tempfile
    >>> from tripletsk.triplets import list_image_keys
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "cat"))
    >>> for name in ["cat/1.JPG", "cat/notes.txt", "2.png"]:
    ...     open(os.path.join(root, name), "wb").close()
    >>> list_image_keys(root).tolist()
    ['2.png', 'cat/1.JPG']
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise TripletDataError(f"{root}: not a folder of images.")
    keys = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                key = name if rel == "." else os.path.join(rel, name)
                keys.append(key.replace(os.sep, "/"))
    return np.array(sorted(keys), dtype=object)


def labels_from_folders(keys) -> np.ndarray:
    """Class labels from image keys: the first folder of each key (``cat/x.jpg`` -> ``cat``).

    Parameters
    ----------
    keys : array-like of str
        Image keys with ``/`` separators, as in the feature cache.

    Returns
    -------
    labels : ndarray of shape (n_keys,), dtype object

    Raises
    ------
    TripletDataError
        If a key has no folder: its class is unknown.

    Examples
    --------
    >>> from tripletsk.triplets import labels_from_folders
    >>> labels_from_folders(["cat/1.jpg", "dog/puppies/2.jpg"]).tolist()
    ['cat', 'dog']
    """
    keys = [str(k) for k in np.asarray(keys, dtype=object).ravel().tolist()]
    parts = [k.partition("/") for k in keys]
    flat = [
        k for k, (head, sep, rest) in zip(keys, parts, strict=True) if not (head and sep and rest)
    ]
    if flat:
        raise TripletDataError(
            f"{len(flat)} image(s) are not inside a class folder, e.g. {flat[0]!r}; class "
            "labels come from the first folder (images/<class>/<image>)."
        )
    return np.array([p[0] for p in parts], dtype=object)


def _hard_triplets(features, y, n_triplets, n_candidates, rng, chunk_size=256):
    """Index triplets with a far positive and a near negative for each random anchor."""
    _, inverse = np.unique(y, return_inverse=True)
    members = _class_members(y)
    sizes = np.bincount(inverse)
    eligible = np.flatnonzero(sizes[inverse] >= 2)
    if eligible.size == 0 or len(members) < 2:
        # Same checks and messages as random sampling.
        sample_label_triplets(y, 1, random_state=0)
    anchors = rng.choice(eligible, size=n_triplets, replace=True)
    triplets = np.empty((n_triplets, 3), dtype=np.int64)
    triplets[:, 0] = anchors
    index = NearestNeighbors(algorithm="brute").fit(features)
    for c in np.unique(inverse[anchors]):
        rows = np.flatnonzero(inverse[anchors] == c)
        same = members[c]
        # Among the k nearest, at most sizes[c] are of the anchor's class, so at least
        # n_candidates (or all) others remain: enough near negatives without a full sort.
        k = min(len(y), n_candidates + sizes[c])
        for start in range(0, len(rows), chunk_size):
            chunk = rows[start : start + chunk_size]
            a = anchors[chunk]
            # Far positives: the n_candidates farthest class members; the anchor is at
            # distance 0 from itself, so it is pushed to -inf by index, not by distance.
            d_same = pairwise_distances(features[a], features[same])
            d_same[same[None, :] == a[:, None]] = -np.inf
            n_pos = min(n_candidates, len(same) - 1)
            far = np.argpartition(-d_same, n_pos - 1, axis=1)[:, :n_pos]
            pick = far[np.arange(len(a)), rng.randint(0, n_pos, size=len(a))]
            triplets[chunk, 1] = same[pick]
            # Near negatives: the first n_candidates other-class neighbours, in distance order.
            neighbours = index.kneighbors(features[a], n_neighbors=k, return_distance=False)
            other = inverse[neighbours] != c
            rank = np.cumsum(other, axis=1)
            n_neg = rank[:, -1].clip(max=n_candidates)
            choice = rng.randint(0, n_neg) + 1  # the choice-th other-class neighbour
            column = np.argmax(other & (rank == choice[:, None]), axis=1)
            triplets[chunk, 2] = neighbours[np.arange(len(a)), column]
    return triplets


def make_triplets_from_folders(
    keys_or_root,
    n_triplets: int,
    *,
    strategy: str = "random",
    features=None,
    n_candidates: int = 10,
    random_state=None,
    path: str | os.PathLike | None = None,
) -> np.ndarray:
    """Make triplets of image keys from class folders (``images/<class>/<image>``).

    For users who have images sorted into one folder per class but no triplet file: the
    class of an image is its first folder (:func:`labels_from_folders`).

    Parameters
    ----------
    keys_or_root : str, path-like or array-like of str
        A folder of class folders (listed recursively with :func:`list_image_keys`), or the
        image keys themselves, e.g. the keys of the feature cache.
    n_triplets : int
        How many triplets to make; anchors are drawn with replacement.
    strategy : {"random", "hard"}, default="random"
        ``"random"``: uniform positives and negatives (:func:`sample_label_triplets`).
        ``"hard"``: for each anchor, a positive drawn among the ``n_candidates`` farthest
        members of its class and a negative among its ``n_candidates`` nearest images of
        other classes, in ``features`` space. Hard triplets make training converge faster
        but are more sensitive to label noise; mixing both files is a reasonable default.
    features : array-like of shape (n_keys, n_features), default=None
        Required for ``"hard"``: one row per key, in the order of the keys (for a folder,
        the sorted order of :func:`list_image_keys`).
    n_candidates : int, default=10
        How many hardest candidates to draw from, so that hard triplets vary.
    random_state : int, RandomState instance or None, default=None
    path : str or path-like, default=None
        If given, the triplets are also written there with :func:`write_triplets`.

    Returns
    -------
    triplets : ndarray of shape (n_triplets, 3), dtype object
        Image keys: anchor, positive, negative.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk.triplets import make_triplets_from_folders
    >>> keys = ["cat/1.jpg", "cat/2.jpg", "dog/1.jpg", "dog/2.jpg"]
    >>> t = make_triplets_from_folders(keys, 3, random_state=0)
    >>> t.shape
    (3, 3)
    >>> features = np.array([[0.0], [1.0], [0.2], [5.0]])
    >>> make_triplets_from_folders(keys, 1, strategy="hard", features=features,
    ...                            n_candidates=1, random_state=0).tolist()
    [['cat/1.jpg', 'cat/2.jpg', 'dog/1.jpg']]
    """
    if strategy not in ("random", "hard"):
        raise ValueError(f"strategy must be 'random' or 'hard'; got {strategy!r}.")
    if isinstance(n_triplets, bool) or not isinstance(n_triplets, (int, np.integer)):
        raise TypeError(f"n_triplets must be an int; got {n_triplets!r}.")
    if n_triplets < 1:
        raise ValueError(f"n_triplets must be at least 1; got {n_triplets}.")
    if isinstance(keys_or_root, (str, os.PathLike)):
        keys = list_image_keys(keys_or_root)
        if keys.size == 0:
            raise TripletDataError(f"{os.fspath(keys_or_root)}: no image files found.")
    else:
        keys = np.asarray(keys_or_root, dtype=object).ravel()
    y = labels_from_folders(keys)
    rng = check_random_state(random_state)
    if strategy == "random":
        triplets = sample_label_triplets(y, n_triplets, random_state=rng)
    else:
        if features is None:
            raise ValueError("strategy='hard' needs features: one row per key.")
        features = check_array(features, dtype=[np.float64, np.float32])
        if len(features) != len(keys):
            raise ValueError(
                f"features has {len(features)} rows but there are {len(keys)} keys; "
                "they must be aligned row for row."
            )
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be at least 1; got {n_candidates}.")
        triplets = _hard_triplets(features, y, n_triplets, n_candidates, rng)
    result = keys[triplets]
    if path is not None:
        write_triplets(path, result)
    return result
