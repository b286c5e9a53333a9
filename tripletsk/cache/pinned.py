"""One version of a cache file, held open: what a :class:`~tripletsk.cache.store.FeatureStore`
reads.

A cache is never modified in place: every writer writes a complete new file and renames it over
the old one (:func:`tripletsk.cache.writer.write_cache`). A reader that holds the file open keeps
the version it opened, whatever is renamed over the path meanwhile: the old file stays readable
(its disk space is freed when its last reader closes it). :class:`PinnedFile` holds that open
file; its keys, attributes and features are all read through it, never through the path, so
they always come from one version. A store holds it from opening until its features are
memory-mapped (the map then keeps that version on disk) or loaded into memory: one open file
per store, as many stores as a merge of shards opens at once. ``identity`` (device, inode,
size, modification time) tells whether the path still names that version, e.g. before a
closed store is used again.
"""

from __future__ import annotations

import contextlib
import os
import stat as _stat

from tripletsk.cache.format import cache_not_found, h5py_module
from tripletsk.errors import CacheFormatError

__all__ = ["PinnedFile"]


class PinnedFile:
    """The file ``path`` names now, open for reading until :meth:`close`.

    ``identity`` is ``(device, inode, size, mtime_ns)`` of that file.
    """

    def __init__(self, path: str):
        self.path = path
        # h5py reads the open file through this Python file object: a name (/proc/self/fd/N)
        # would not do, as HDF5 resolves it to the path, gone once another version replaced it.
        try:
            self.file = open(path, "rb")  # (held until close())
        except FileNotFoundError:
            raise cache_not_found(path) from None
        except IsADirectoryError:
            raise _unreadable(path, "a folder") from None
        except OSError as e:
            raise _unreadable(path, e.strerror or e) from None
        st = os.fstat(self.file.fileno())
        if _stat.S_ISDIR(st.st_mode):
            self.close()
            raise _unreadable(path, "a folder")
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def fd(self) -> int:
        """The open file's descriptor (e.g. to memory-map it)."""
        return self.file.fileno()

    def open_h5(self):
        """This version as an open, read-only ``h5py.File`` (the caller closes it)."""
        return h5py_module().File(self.file, "r")

    def close(self) -> None:
        """Release the file (a memory map of it stays valid, and keeps it on disk)."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None


def _unreadable(path: str, why) -> CacheFormatError:
    return CacheFormatError(
        f"{path} is not a readable tripletsk feature cache ({why}); give the path of a cache "
        "made by extract-features, or write a new cache to another file"
    )
