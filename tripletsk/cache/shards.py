"""Shards: extract a fixed share of the images per process, then merge the shard caches.

``extract_features(images, shard="I/N", output=...)`` (``tripletsk extract-features images/
--shard I/N``) extracts only the images whose key falls in shard I of N (1-based, as in
``features-I-of-N.h5``). The shard of a key is ``blake2b(key) mod N``: it depends on the key alone,
so it is the same on every machine and under any listing order, a new image never moves another
one to another shard, and shards are balanced by count (within a few percent once a shard holds
a few thousand images). Files that cannot be read belong to the shard of their key.

:func:`tripletsk.cache.merge.merge_shards` (``tripletsk merge-features``) merges the shard caches
into one.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import replace

from tripletsk.errors import ShardError

__all__ = [
    "SHARD_ASSIGNMENT",
    "SHARD_ATTRS",
    "check_shard_output",
    "parse_shard",
    "select_shard",
    "shard_of",
    "shard_path",
]

#: Recorded in each shard: merging shards assigned by another rule is refused.
SHARD_ASSIGNMENT = "blake2b-8(utf-8 key) mod N, 1-based"
#: Attributes written only in shard caches (dropped from the merged cache).
SHARD_ATTRS = (
    "shard",
    "shard_index",
    "shard_count",
    "shard_assignment",
    "shard_listing",
    "shard_listed",
    "shard_complete",
)


def parse_shard(shard: str | Sequence[int]) -> tuple[int, int]:
    """``"I/N"`` or ``(I, N)`` -> ``(I, N)``, with 1 <= I <= N (shards are numbered from 1).

    Raises
    ------
    ShardError
        If the value is not of that form.
    """
    if isinstance(shard, str):
        m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", shard)
        if not m:
            raise ShardError(
                f"shard must be I/N, e.g. 1/4 for the first of 4 shards; got {shard!r}"
            )
        i, n = int(m.group(1)), int(m.group(2))
    else:
        try:
            i, n = (int(x) for x in shard)
        except (TypeError, ValueError):
            raise ShardError(f"shard must be 'I/N' or a pair (I, N); got {shard!r}") from None
    if n < 1:
        raise ShardError(f"shard I/N needs N >= 1 shards; got {i}/{n}")
    if not 1 <= i <= n:
        raise ShardError(
            f"shard {i}/{n}: shards are numbered from 1 to {n} (1-based, as in "
            f"features-{max(i, 1)}-of-{n}.h5); pass 1/{n} ... {n}/{n}"
        )
    return i, n


def shard_of(key: str, n: int) -> int:
    """The shard (1..n) of an image key: ``blake2b(key) mod n``, plus 1."""
    h = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(h, "big") % int(n) + 1


def shard_path(output: str | os.PathLike, i: int, n: int) -> str:
    """The file of shard ``i`` of ``n`` next to ``output``: ``<output>.shard-I-of-N.h5``."""
    return f"{os.fspath(output)}.shard-{i}-of-{n}.h5"


def _listing_digest(keys) -> str:
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(keys):
        h.update(k.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def select_shard(found, shard):
    """Keep the files (and failures) of ``found`` (a ``Discovery``) that belong to ``shard``.

    Returns the filtered discovery and the shard attributes to record in the cache: which shard,
    the assignment rule, and a digest and count of the *whole* listing, so that a merge can tell
    that every shard saw the same images.
    """
    i, n = parse_shard(shard)
    everything = [f.key for f in found.files] + [k for k, _ in found.failed]
    attrs = {
        "shard": f"{i}/{n}",
        "shard_index": i,
        "shard_count": n,
        "shard_assignment": SHARD_ASSIGNMENT,
        "shard_listing": _listing_digest(everything),
        "shard_listed": len(everything),
    }
    mine = replace(
        found,
        files=[f for f in found.files if shard_of(f.key, n) == i],
        failed=[(k, r) for k, r in found.failed if shard_of(k, n) == i],
    )
    return mine, attrs


def check_shard_output(old_attrs: dict, shard_attrs: dict | None, output: str) -> None:
    """Refuse to update a shard cache as another shard, or a whole cache as a shard (and back)."""
    have = old_attrs.get("shard")
    want = shard_attrs["shard"] if shard_attrs else None
    if have == want:
        return
    if want is None:
        raise ShardError(
            f"{output} is shard {have} of a sharded extraction; extract shard {have} to update "
            "it, or merge the shards and update the merged cache"
        )
    if have is None:
        raise ShardError(
            f"{output} is a whole (unsharded) cache; write shard {want} to its own file, e.g. "
            f"{shard_path(output, *parse_shard(want))}"
        )
    raise ShardError(
        f"{output} holds shard {have}, not {want}; write each shard to its own file, e.g. "
        f"{shard_path(output, *parse_shard(want))}"
    )
