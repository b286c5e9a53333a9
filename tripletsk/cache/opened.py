"""The :class:`~tripletsk.cache.store.FeatureStore` of a cache path, opened once per version of
the file (:func:`open_cache`): for the callers given a path rather than a store.
"""

from __future__ import annotations

import os
import threading

from tripletsk.cache.store import FeatureStore

__all__ = ["open_cache"]


def open_cache(path: str | os.PathLike) -> FeatureStore:
    """The FeatureStore of a cache path, opened once per version of the file.

    Opening reads every key to build the key index; ``transform`` and ``search`` call lookups
    chunk by chunk, so reopening each time would repeat that work. A store reads the version of
    the file it opened (:mod:`tripletsk.cache.pinned`); once the path names another version
    (extraction replaces the file atomically), it is opened afresh and the store of the old
    version let go (closed when no one uses it), so that its disk space can be freed. The
    stores of at most 4 paths are kept.
    """
    path = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(path)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        identity = None  # let FeatureStore raise its own, clear error
    with _OPEN_LOCK:
        kept = _OPEN.get(path)
        if kept is not None and kept._identity == identity:
            return kept
    store = FeatureStore(path)
    with _OPEN_LOCK:
        _OPEN.pop(path, None)
        while len(_OPEN) >= 4:
            _OPEN.pop(next(iter(_OPEN)))
        _OPEN[path] = store
    return store


_OPEN: dict[str, FeatureStore] = {}  # path -> the store of its latest version opened
_OPEN_LOCK = threading.Lock()
