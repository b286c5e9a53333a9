"""``<cache>.lock``: one extractor at a time writes a cache (``flock``, released if it dies)."""

from __future__ import annotations

import contextlib
import os

from tripletsk.cache.writer import now_iso
from tripletsk.errors import CacheLockedError

__all__ = ["CacheLock"]


class CacheLock:
    """Exclusive, non-blocking lock on ``<cache>.lock`` (released by the OS if the process dies)."""

    def __init__(self, cache_path: str | os.PathLike):
        self.cache_path = os.fspath(cache_path)
        self.path = self.cache_path + ".lock"
        self._fd = None

    def acquire(self) -> CacheLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
        except OSError:
            holder = ""
            with contextlib.suppress(Exception):  # (no os.pread on Windows)
                txt = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                holder = f" (held by {txt})" if txt else ""
            os.close(fd)
            raise CacheLockedError(
                f"another extraction is writing {self.cache_path}{holder}; wait for it to finish "
                f"or write to another cache file. (The lock is {self.path}; it is released when "
                "that process exits.)"
            ) from None
        with contextlib.suppress(Exception):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {now_iso()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            with contextlib.suppress(OSError):
                _unlock_fd(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        os.lseek(fd, 0, 0)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
