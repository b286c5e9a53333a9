"""A failure to write the cache or its journal, as one line saying what happened and what to do.

A full disk, a quota, a read-only or forbidden folder, or a file grown past the size limit (the
process's ``ulimit -f`` / ``RLIMIT_FSIZE``, or the file system's maximum) raise an ``OSError`` (or,
from HDF5, a ``RuntimeError`` quoting the errno). Nothing is lost then: the previous cache is
only ever replaced whole, and finished batches stay in the journal for the next run to resume.
"""

from __future__ import annotations

import contextlib
import errno
import re

from tripletsk.errors import UserError

__all__ = ["CacheWriteError", "writing_cache"]

_WRITABLE = "make the folder writable or write the cache elsewhere"
#: errno -> (what happened, what to do)
_ADVICE = {
    errno.ENOSPC: ("no space left on the device", "free some space"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or raise the quota"),
    errno.EFBIG: (
        "file too large (the file-size limit of this process, `ulimit -f`, or of the file "
        "system was reached)",
        "raise the limit or write the cache to another file system",
    ),
    errno.EROFS: ("the file system is read-only", "write the cache to a writable folder"),
    errno.EACCES: ("permission denied", _WRITABLE),
    errno.EPERM: ("operation not permitted", _WRITABLE),
}
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


class CacheWriteError(UserError, OSError):
    """The cache (or its journal of finished batches) could not be written."""

    def __str__(self) -> str:  # OSError would format its args as a tuple
        return str(self.args[0]) if self.args else ""


def _errno_of(err: BaseException) -> int | None:
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno
    m = _HDF5_ERRNO.search(str(err))
    return int(m.group(1)) if m else None


def describe(output: str, journal_dir: str, err: BaseException) -> str:
    """The one-line message for ``err``, raised while writing ``output`` or ``journal_dir``."""
    code = _errno_of(err)
    what, todo = _ADVICE.get(
        code, (getattr(err, "strerror", None) or str(err) or type(err).__name__, "fix this")
    )
    return (
        f"cannot write the cache {output}: {what}. Nothing is lost: the previous cache is "
        f"unchanged and finished batches are kept in {journal_dir}; {todo}, then run the same "
        "extraction again to resume."
    )


@contextlib.contextmanager
def writing_cache(output: str, journal_dir: str):
    """Turn an error of the writes inside that reports an errno (an ``OSError``, or HDF5's
    ``RuntimeError`` quoting one) into a :class:`CacheWriteError`."""
    try:
        yield
    except CacheWriteError:
        raise
    except (OSError, RuntimeError) as err:
        if _errno_of(err) is None:  # not the operating system's refusal (e.g. corrupt HDF5 data)
            raise
        raise CacheWriteError(describe(output, journal_dir, err)) from err
