"""Feature extraction: find images, decode them, run a frozen backbone, cache the features.

The expensive one-time step. ``extract_features(images_dir)`` (``tripletsk extract-features``)
passes every image once through a frozen backbone (by default ResNet50 up to its ``avg_pool`` layer,
2048 numbers; any ``keras.applications`` model or a user's model file) and stores the features in an
HDF5 cache (see :mod:`tripletsk.cache.store`). Runs are incremental (only new or changed
images are extracted), resumable after any interruption (SIGKILL included), and unreadable files
are skipped and reported with a reason.

Modules: ``parameters`` (the parameters of an extraction, declared once), ``options`` (one
run's checked settings), ``discovery`` (finding images), ``decode`` (Pillow decoding,
fingerprints), ``budget`` (the decoders' shared memory budget), ``architecture`` (which network),
``preprocessing`` (pixel scaling), ``backbone`` (weights, the model, provenance), ``plan`` (what a
run keeps, extracts and drops), ``pipeline`` (decoding threads feeding the model), ``run`` (one
run, :func:`extract_features`), ``summary``, ``query`` (:func:`features_for_files`), ``runners``
(TensorFlow or OpenVINO runners of the backbone), ``model_folders`` (OpenVINO models kept beside
the cache), ``openvino_float`` (float models converted once), ``quantization`` (NNCF int8
quantization of a model), ``int8`` (the calibration sample and int8 model of a cache), ``auto``
(choosing the fastest runner), ``image_features`` (:class:`ImageFeatures`, a scikit-learn
transformer) with ``cache_lookup`` (its reads of the cache), ``distributed`` (extraction on a
Dask cluster) with ``dask_cluster`` (local clusters, TensorFlow threads). TensorFlow is imported
only when a model is built.
"""

from tripletsk.extraction.backbone import (
    Backbone,
    WeightsSpec,
    build_backbone,
    provenance_for,
    resolve_network,
    resolve_weights,
)
from tripletsk.extraction.decode import PREPROCESSING, load_image
from tripletsk.extraction.discovery import IMAGE_EXTENSIONS, Discovery, ImageFile, discover_images
from tripletsk.extraction.parameters import check_backend
from tripletsk.extraction.query import features_for_files
from tripletsk.extraction.run import extract_features
from tripletsk.extraction.summary import ExtractionSummary

__all__ = [
    "IMAGE_EXTENSIONS",
    "PREPROCESSING",
    "Backbone",
    "Discovery",
    "ExtractionSummary",
    "ImageFile",
    "WeightsSpec",
    "build_backbone",
    "check_backend",
    "discover_images",
    "extract_features",
    "features_for_files",
    "load_image",
    "provenance_for",
    "resolve_network",
    "resolve_weights",
]
