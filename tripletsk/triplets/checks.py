"""What the triplets of a file are checked for: names not among the known images, triplets
that repeat an image, with the lines where they stand."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Collection, Sequence

import numpy as np

from tripletsk.errors import TripletFileError

__all__ = [
    "N_SHOWN",
    "check_known",
    "check_on_self",
    "check_repeats",
    "repeating_rows",
    "unknown_error",
]

N_SHOWN = 5  # offending lines quoted in one error or warning message


def _close_matches(name: str, known: Collection[str]) -> list[str]:
    """Up to 3 known names that look like ``name``, looking in its own folder first."""
    folder = name.rpartition("/")[0]
    nearby = [k for k in known if k.rpartition("/")[0] == folder]
    # A folder's contents are few and the likeliest match; the whole set is the fallback.
    return difflib.get_close_matches(name, nearby, n=3) or difflib.get_close_matches(
        name, known, n=3
    )


def check_known(
    path: str, triplets: np.ndarray, line_numbers: np.ndarray, known_keys: Collection[str]
) -> None:
    """Refuse names of ``triplets`` (read from ``path``) not among ``known_keys``."""
    known = known_keys if isinstance(known_keys, (set, frozenset)) else set(known_keys)
    # One membership test per distinct name, not per occurrence.
    names, inverse = np.unique(triplets.astype(str), return_inverse=True)
    is_unknown = np.array([name not in known for name in names.tolist()], dtype=bool)
    if not is_unknown.any():
        return
    bad_cells = np.flatnonzero(is_unknown[inverse.ravel()])
    first_line_of = {}
    for cell in bad_cells.tolist():
        first_line_of.setdefault(str(triplets.flat[cell]), line_numbers[cell // 3])
    raise unknown_error(path, first_line_of, len(bad_cells), known)


def unknown_error(path: str, first_line_of: dict, uses: int, known: Collection[str],
                  stopped_at: int | None = None) -> TripletFileError:  # fmt: skip
    """The error for unknown names: how many, how often, the first few with a suggestion."""
    details = []
    for name, line in list(first_line_of.items())[:N_SHOWN]:
        matches = _close_matches(name, known)
        hint = f" (did you mean {', '.join(map(repr, matches))}?)" if matches else ""
        details.append(f"line {line}: {name!r}{hint}")
    count = f"{len(first_line_of)}"
    if stopped_at is not None:
        count = f"more than {len(first_line_of) - 1} (reading stopped at line {stopped_at})"
    return TripletFileError(
        f"{path}: {count} image name(s) not among the {len(known)} known "
        f"images, used {uses} time(s); first: " + "; ".join(details) + "."
    )


def repeating_rows(t: np.ndarray) -> np.ndarray:
    """Rows of triplets ``t`` that repeat an image."""
    return np.flatnonzero((t[:, 0] == t[:, 1]) | (t[:, 0] == t[:, 2]) | (t[:, 1] == t[:, 2]))


def check_repeats(path: str, count: int, lines: Sequence[int], on_self: str) -> None:
    """Warn about (or refuse) ``count`` triplets that repeat an image, first at ``lines``."""
    if count == 0 or on_self == "ignore":
        return
    shown = ", ".join(str(n) for n in lines[:N_SHOWN])
    message = (
        f"{path}: {count} triplet(s) repeat an image (anchor equal to positive or "
        f"negative, or positive equal to negative), at line(s) {shown}"
        f"{', ...' if count > N_SHOWN else ''}; such triplets teach nothing."
    )
    if on_self == "error":
        raise TripletFileError(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def check_on_self(on_self: str) -> None:
    """Refuse an ``on_self`` other than ``"warn"``, ``"error"`` or ``"ignore"``."""
    if on_self not in ("warn", "error", "ignore"):
        raise ValueError(f"on_self must be 'warn', 'error' or 'ignore'; got {on_self!r}.")
