"""The feature cache: one HDF5 file of image features, written whole, read by key.

``format``: the file's layout, its header and provenance.
Reading: ``store`` (:class:`FeatureStore`), ``opened`` (a path's store, opened once per version),
``pinned`` (one version of the file held open), ``reads`` (opening the features: memory-mapped by
``mapped`` with chunk checksums checked by ``checksums``, or read through HDF5), ``messages``.
Writing: ``writer`` (a complete cache, atomically), ``journal`` (the crash-safe parts journal of
an unfinished run), ``lock`` (one writer at a time), ``write_errors`` (a cache that cannot be
written), ``failures`` (the list of unreadable images), ``roots`` (one images folder per cache),
``shards`` (which image belongs to which shard), ``merge`` (merging shard caches into one),
``repair`` (finding damaged rows). ``provenance``: the features a model was fitted on, checked
at every read.
"""

from tripletsk._lazy import lazy_getattr, public_names

_LAZY = public_names(
    {
        "tripletsk.cache.store": ["DEFAULT_CACHE", "FeatureStore"],
        "tripletsk.cache.opened": ["open_cache"],
        "tripletsk.cache.writer": ["write_cache"],
        "tripletsk.cache.merge": ["MergeSummary", "merge_shards"],
        "tripletsk.cache.failures": ["read_failed_list"],
        "tripletsk.cache.repair": ["corrupt_rows"],
        "tripletsk.cache.provenance": ["check_features_provenance"],
    }
)

__all__ = [*_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)
