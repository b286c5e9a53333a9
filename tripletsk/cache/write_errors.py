"""A failure to write the cache or its journal, as one line saying what happened and what to do.

A full disk, a quota, a read-only or forbidden folder, or a file grown past the size limit (the
process's ``ulimit -f`` / ``RLIMIT_FSIZE``, or the file system's maximum) raise an ``OSError`` (or,
from HDF5, a ``RuntimeError`` quoting the errno). Nothing is lost then: the previous cache is
only ever replaced whole, and finished batches stay in the journal for the next run to resume.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys

from tripletsk.errors import UserError

__all__ = ["CacheWriteError", "check_room", "writing_cache"]

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


def describe(output: str, journal_dir: str, err: BaseException, needed: int = 0) -> str:
    """The one-line message for ``err``, raised while writing ``output`` or ``journal_dir``
    (``needed``: bytes the new cache needs at least, if known)."""
    code = _errno_of(err)
    what, todo = _ADVICE.get(
        code, (getattr(err, "strerror", None) or str(err) or type(err).__name__, "fix this")
    )
    if needed:
        what += f"; the new cache needs at least {needed / 1e6:.1f} MB"
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
        _quiet_hdf5_cleanup()
        raise CacheWriteError(describe(output, journal_dir, err)) from err


def check_room(output: str, journal_dir: str, needed: int) -> None:
    """Refuse to start writing a cache of ``needed`` bytes (a lower bound) that cannot fit under
    the process's file-size limit or in the free space of its folder.

    Checked before HDF5 writes: HDF5 recovers badly from a failed write (each of the file's
    objects reports the error again when freed, and the library can crash at exit).
    """
    limit = _file_size_limit()
    if limit is not None and needed > limit:
        err = OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        raise CacheWriteError(describe(output, journal_dir, err, needed))
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(output)))
    except (OSError, AttributeError):  # no statvfs (Windows): the write itself will tell
        return
    if needed > st.f_bavail * st.f_frsize:
        err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise CacheWriteError(describe(output, journal_dir, err, needed))


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _quiet_hdf5_cleanup() -> None:
    """After a failed HDF5 write, each HDF5 object of the file reports the same error again when
    it is freed ("Exception ignored in: 'h5py._objects.ObjectID.__dealloc__'", a traceback), long
    after the one-line message: keep those repeats off stderr from now on."""
    hook = sys.unraisablehook
    if getattr(hook, "_tripletsk_quiet", False):
        return

    def quiet(unraisable) -> None:
        if not (
            "h5py" in repr(unraisable.object) and isinstance(unraisable.exc_value, RuntimeError)
        ):
            hook(unraisable)

    quiet._tripletsk_quiet = True
    sys.unraisablehook = quiet
