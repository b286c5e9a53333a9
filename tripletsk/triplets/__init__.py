"""Triplets: files of image names, and triplets chosen from labels or class folders.

``files`` (read and write triplet files, with line-exact errors), ``lines`` and ``key_table``
(reading millions of lines a block at a time), ``mining`` (choosing triplets from labels, in
NumPy), ``folders`` (triplets from ``images/<class>/<image>``).
"""

from tripletsk._lazy import lazy_getattr

_LAZY = {
    "TripletDataError": "tripletsk.triplets.files",
    "TripletFile": "tripletsk.triplets.files",
    "TripletFileError": "tripletsk.triplets.files",
    "TripletIndices": "tripletsk.triplets.files",
    "read_triplet_indices": "tripletsk.triplets.files",
    "read_triplets": "tripletsk.triplets.files",
    "write_triplets": "tripletsk.triplets.files",
    "pk_batches": "tripletsk.triplets.mining",
    "sample_label_triplets": "tripletsk.triplets.mining",
    "hard_label_triplets": "tripletsk.triplets.mining",
    "make_triplets_from_folders": "tripletsk.triplets.folders",
    "labels_from_folders": "tripletsk.triplets.folders",
    "list_image_keys": "tripletsk.triplets.folders",
}

__all__ = [*_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)
