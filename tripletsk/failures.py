"""The failure list next to a cache: ``<cache>.failed.tsv``, one ``key<TAB>reason`` per line.

Written by extraction and by the merge of shards; the cache itself stores the same list.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["write_failed_list"]


def write_failed_list(output: str, failed: list) -> str | None:
    """Write ``failed`` (``[(key, reason)]``) next to the cache ``output`` and return its path;
    with no failures, remove an old list and return None."""
    path = output + ".failed.tsv"
    if not failed:
        with contextlib.suppress(OSError):
            os.remove(path)
        return None
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("key\treason\n")
        for k, r in failed:
            fh.write(f"{k}\t{r}\n".replace("\r", " "))
    os.replace(tmp, path)
    return path
