"""The feature cache: one HDF5 file of image features, written whole, read by key.

Reading: ``store`` (:class:`FeatureStore`), ``pinned`` (one version of the file held open),
``mapped`` (memory-mapped reads with chunk checksums, ``checksums``), ``messages``.
Writing: ``format`` (the file's layout, its header and writing a complete cache), ``journal``
(the crash-safe parts journal of an unfinished run), ``lock`` (one writer at a time),
``write_errors`` (a cache that cannot be written), ``failures`` (the list of unreadable images),
``roots`` (one images folder per cache), ``shards`` (per-process shares and their merge),
``repair`` (finding damaged rows). ``provenance``: the features a model was fitted on, checked
at every read.
"""

from tripletsk._lazy import lazy_getattr, public_names

_LAZY = public_names(
    {
        "tripletsk.cache.store": ["DEFAULT_CACHE", "FeatureStore", "UnknownKeyError"],
        "tripletsk.cache.shards": ["MergeSummary", "merge_shards"],
        "tripletsk.cache.failures": ["read_failed_list"],
        "tripletsk.cache.repair": ["corrupt_rows"],
        "tripletsk.cache.provenance": ["check_features_provenance"],
    }
)

__all__ = [*_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)
