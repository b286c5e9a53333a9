"""The error messages of :class:`~tripletsk.cache.store.FeatureStore`: unknown keys, damaged rows,
a rewritten file."""

from __future__ import annotations

import difflib

import numpy as np

__all__ = ["changed_message", "corrupt_rows_message", "unknown_keys_message"]


def unknown_keys_message(path: str, unknown: list, header) -> str:
    """Which keys of ``unknown`` are not in the cache ``path`` (``header``: its CacheHeader),
    with the nearest known names."""
    uniq = list(dict.fromkeys(map(str, unknown)))
    shown = uniq[:5]
    known = header.keys
    parts = []
    for k in shown:
        base = k.rsplit("/", 1)[-1]
        pool = known
        if len(known) > 20000:  # difflib is slow on huge caches: same folder or file name
            folder = k.rsplit("/", 1)[0] + "/" if "/" in k else ""
            pool = [x for x in known if x.startswith(folder) or x.endswith(base)][:20000]
        close = difflib.get_close_matches(k, pool, n=3, cutoff=0.6) if len(pool) else []
        if not close:  # also try by file name, for keys given without their folder
            close = [x for x in pool if x.rsplit("/", 1)[-1] == base][:3]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        parts.append(f"{k!r}{hint}")
    more = f" and {len(uniq) - len(shown)} more" if len(uniq) > len(shown) else ""
    failed = {k for k, _ in header.failed}
    nfail = sum(1 for k in uniq if k in failed)
    fail_note = (
        f"; {nfail} of them could not be read as images when the cache was made "
        "(see FeatureStore.failed)"
        if nfail
        else ""
    )
    return (
        f"{len(uniq)} unknown image key(s) not in {path}: {', '.join(parts)}{more}"
        f"{fail_note}. Keys are paths relative to the extracted image folder with '/' "
        "separators; run `tripletsk extract-features` on the folder to add new images."
    )


def corrupt_rows_message(path: str, rows: np.ndarray, keys: list, why: str) -> str:
    """The features of ``rows`` (sorted; ``keys``: the cache's keys) are damaged: ``why``."""
    named = [keys[r] for r in rows[:3]]
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    return (
        f"corrupt cache: {path}: the features of {len(rows)} row(s) ({_ranges(rows)}; "
        f"keys {', '.join(map(repr, named))}{more}) are damaged ({why}). Re-run `tripletsk "
        f"extract-features IMAGES_DIR -o {path} --verify` to re-extract them "
        "(FeatureStore.corrupt_rows() lists every damaged row)."
    )


def _ranges(rows: np.ndarray, shown: int = 4) -> str:
    """``"rows 8-15, 40-47"`` for sorted ``rows``, the first ``shown`` runs."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = [(int(r[0]), int(r[-1])) for r in np.split(rows, breaks)]
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:shown])
    return f"rows {text}" + (", ..." if len(runs) > shown else "")


def changed_message(path: str) -> str:
    """A closed store's cache ``path`` was replaced by another version since it read the keys."""
    return (
        f"{path} was rewritten (e.g. by another extraction) since this FeatureStore read its "
        "keys and was closed: its rows now belong to another version of the cache. Open a new "
        f"FeatureStore({path!r}) (or run again) to read the new version."
    )
