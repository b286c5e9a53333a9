"""Triplets: files of image names, and triplets chosen from labels or class folders.

``files`` (read and write triplet files, with line-exact errors), ``checks`` (unknown names,
repeated images), ``lines`` and ``key_table`` (reading millions of lines a block at a time),
``mining`` (choosing triplets from labels, in NumPy), ``folders`` (triplets from
``images/<class>/<image>``).
"""

from tripletsk._lazy import lazy_getattr, public_names

_LAZY = public_names(
    {
        "tripletsk.errors": ["TripletDataError", "TripletFileError"],
        "tripletsk.triplets.files": [
            "TripletFile",
            "TripletIndices",
            "read_triplet_indices",
            "read_triplets",
            "write_triplets",
        ],
        "tripletsk.triplets.mining": ["pk_batches", "sample_label_triplets", "hard_label_triplets"],
        "tripletsk.triplets.folders": [
            "make_triplets_from_folders",
            "labels_from_folders",
            "list_image_keys",
        ],
    }
)

__all__ = [*_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)
