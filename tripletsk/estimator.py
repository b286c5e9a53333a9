"""TripletEncoder: a scikit-learn estimator that learns an embedding with triplet loss."""

from __future__ import annotations

import os
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from tripletsk import persist
from tripletsk.cache.provenance import ProvenanceCheck
from tripletsk.distances import DISTANCES
from tripletsk.errors import EmbeddingCollapseWarning
from tripletsk.evaluation.pairs import PairVerifierMixin
from tripletsk.training import sources
from tripletsk.training.config import TrainingConfig, check_params
from tripletsk.training.fitting import fit_head
from tripletsk.training.inference import EmbeddingMixin
from tripletsk.training.shared_images import fitted_images
from tripletsk.training.strategies import MINING_WORDS

__all__ = ["EmbeddingCollapseWarning", "TripletEncoder"]


class TripletEncoder(
    EmbeddingMixin,
    PairVerifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    BaseEstimator,
):
    """Learn an L2-normalised embedding with triplet loss, on precomputed features.

    A small dense head (``hidden_units`` ReLU layers with dropout, then a linear layer of
    ``n_components`` and L2 normalisation) is trained so that for each triplet
    ``(anchor, positive, negative)`` the anchor ends up closer to the positive than to the
    negative. Training uses TensorFlow; the fitted model is plain NumPy, so ``transform``,
    ``predict_triplets``, pickling and :meth:`save` / :meth:`load` need no TensorFlow.

    It learns from either kind of supervision:

    * ``fit(T)``: triplets. ``T`` is an (n, 3, d) array of feature vectors, or an (n, 3) array
      of integer indices or string keys into ``features``.
    * ``fit(X, y)``: class labels. Triplets are mined from ``y`` as set by ``mining``. ``X`` is
      an (n, d) array, or a 1-d array of indices or keys into ``features``. This is the mode
      that scikit-learn pipelines use.

    Parameters
    ----------
    features : array of shape (n_samples, d), str, path, FeatureStore, mapping or None
        Where indices and keys point. An array is indexed by integers; a path opens the HDF5
        cache of ``tripletsk extract-features`` (a :class:`~tripletsk.cache.store.FeatureStore`);
        any mapping of key -> vector works too. ``None`` means inputs hold the feature vectors
        themselves, or, for string keys, the default cache ``cache/features.h5``.
        scikit-learn's ``clone`` (``GridSearchCV``, ``cross_val_score``) deep-copies a plain
        array once per fit; wrap a large one as :class:`tripletsk.training.shared.SharedFeatures`
        (clones share it) or pass a cache path / ``FeatureStore``.
    hidden_units : int, tuple of int or "auto", default="auto"
        Sizes of the hidden ReLU layers; ``()`` makes a linear head. ``"auto"``: one layer of
        1024, halved until the first layer has at most 2**20 weights (512 for 2048-d CNN
        features); see :func:`tripletsk.training.head.auto_hidden_units`.
    n_components : int, default=64
        Dimension of the embedding.
    dropout : float, default=0.0
        Dropout rate after each hidden layer while training.
    input_dropout : float, default=0.1
        Dropout rate of the input features while training (a cheap augmentation).
    distance : {"l2", "l1", "sqeuclidean", "cosine"}, default="l2"
        Distance between embeddings, in the loss and in every prediction.
    margin : float or None, default=None
        Margin of the hinge loss ``max(d(a, p) - d(a, n) + margin, 0)``; ``None``: the soft
        margin (``soft_margin_scale``). L2 distances of unit embeddings lie in
        [0, 2]. docs/decisions.md says how the head's defaults were chosen.
    soft_margin_scale : float, default=4.0
        With ``margin=None``: the soft margin is ``log(1 + exp(s (d(a, p) - d(a, n)))) / s``
        with s this value, sharper (nearer the hinge at margin 0) for larger s; ignored with a
        margin. 1 is the plain soft margin (the default before 2026-12-06); 4 learned in fewer
        epochs and ranked as well or better on backbone features and given triplets on
        validation (docs/findings/defaults_study.md). ``tol="auto"`` for the loss is divided
        by s, since the loss is about s times smaller.
    mining : {"auto", "random", "batch_all", "batch_hard", "semi_hard", "hybrid", "hard"}, \
            default="auto"
        How ``fit(X, y)`` turns labels into triplets (the table of
        :mod:`tripletsk.training.strategies` says what each word does). ``"random"`` draws one
        random valid triplet per anchor each epoch; the others mine online inside P x K batches
        (K = ``samples_per_class`` samples of P = ``batch_size // K`` classes), see
        :mod:`tripletsk.training.losses`;
        ``"hybrid"`` adds the offline hard positives and negatives of each batch's anchors,
        then mines batch-hard. ``"auto"`` is ``"semi_hard"`` (docs/decisions.md says why).
        With ``fit(T)``, ``"auto"`` uses the given triplets, and ``"hard"`` adds each epoch
        each anchor's hardest known triplet (farthest known positive, nearest negative).
    samples_per_class : int or "auto", default="auto"
        K of the P x K batches of online mining. ``"auto"`` is 4, or more when there are
        fewer than ``batch_size // 4`` classes, so that a batch holds ``batch_size`` samples
        (10 classes, ``batch_size=256``: 10 classes x 25); a number that leaves the batch
        short of classes warns (:func:`tripletsk.training.plan.pk_shape`).
    hard_per_anchor : int, default=2
        For ``mining="hybrid"``: hard positives and hard negatives kept per anchor.
    refresh_every : int, default=0
        For ``mining="hybrid"``: every this many epochs, find the hard examples again on the
        current embeddings instead of the frozen features; 0 never refreshes.
    learning_rate : float, default=1e-3
        Adam's learning rate.
    learning_rate_schedule : {"constant", "cosine"}, default="constant"
        ``"cosine"`` lowers the learning rate of each epoch along a half cosine, from
        ``learning_rate`` at the first epoch towards 0 at ``max_epochs``; reaching
        ``max_epochs`` then completes the fit (no ``ConvergenceWarning``).
    weight_decay : float, default=0.0
        Decoupled weight decay (AdamW): each step shrinks the head's kernels by
        ``learning_rate * weight_decay`` of their value; biases are not decayed.
    weight_averaging : float, default=0.9
        Decay of a bias-corrected moving average of the head's weights over epochs: the fitted
        head (and the one early stopping scores) is that average, not the last epoch's
        weights. 0 turns it off; 0.9 averages roughly the last 10 epochs.
    batch_size : int, default=256
        Triplets per step for ``fit(T)`` and ``mining="random"``; samples per P x K batch for
        online mining.
    max_epochs : int, default=100
        Passes over the training data at most; reaching it while the watched figure (see
        ``stopping``) still improves warns (``ConvergenceWarning``).
    tol : float or "auto", default="auto"
        Minimum improvement of the watched figure (``stopping``, or the validation score
        with ``early_stopping``) that resets the ``n_iter_no_change`` count. ``"auto"``:
        5e-3 for the training loss (divided by ``soft_margin_scale`` under the soft margin),
        2e-3 for the error and the validation score.
    stopping : {"auto", "error", "loss"}, default="auto"
        What a fit without ``early_stopping`` watches to stop by itself, using no held-out
        data: ``"error"``, the share of wrongly ordered triplets in each epoch's training
        batches (``error_curve_``; among all the valid triplets of each batch when mining from
        labels); ``"loss"``, the mean training loss (``loss_curve_``). The fit stops after
        ``n_iter_no_change`` epochs without an improvement by more than ``tol``. ``"auto"``:
        the error for ``fit(X, y)``, the loss for ``fit(T)``, whose fixed triplets are soon
        all ordered right while the head still improves (:mod:`tripletsk.training.stopping`).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (triplets, or samples
        stratified by label), stop when its triplet accuracy stops improving, and keep the
        weights of the best epoch.
    validation_fraction : float, default=0.1
        Share of the training data held out with ``early_stopping``.
    n_iter_no_change : int, default=10
        Epochs without improvement before stopping.
    standardize : bool, default=True
        Centre each input feature on its training mean, then divide all by one overall scale
        (the root mean variance): CNN features' large positive means can collapse a ReLU head;
        one scale, not one per feature, keeps near-constant features from turning into noise.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, dropout, batch order and triplet sampling. The same value
        gives the same embeddings; global random state is never touched.
    verbose : int, default=0
        0: a progress bar of the epochs (loss and training triplet accuracy) on stderr when it
        is a terminal; 1 or more: also one line per epoch on stdout; negative: nothing.
    precision : {"float32", "bfloat16"}, default="float32"
        Arithmetic of the head's matrix products while training. ``"bfloat16"``: Keras'
        ``mixed_bfloat16`` policy on the head's layers only (float32 weights, optimizer and
        loss; the global policy untouched), faster only where the hardware multiplies bfloat16
        natively (AVX512-BF16, AMX, recent GPUs); fitted weights and inference stay float32.
        ``benchmarks/README.md`` has the measured speed and accuracy.
    stream : bool, default=False
        Read the features in storage order, for caches larger than memory: each epoch visits
        blocks of consecutive rows (2 MiB, or whole HDF5 chunks) in a random order, 64 MiB of
        them at a time, and batches draw on one such window, so results differ a little. By
        default a fit keeps one standardised copy of its rows while they fit in 1 GiB, else
        reads them in random order, 64 MiB at a time; see ``docs/scaling.md``.

    Attributes
    ----------
    n_features_in_ : int
        Width of the input feature vectors.
    feature_mean_, feature_scale_ : ndarray of shape (n_features_in_,)
        The standardisation learned in ``fit`` (zeros and ones when ``standardize=False``).
    weights_ : list of (kernel, bias) tuples of ndarrays
        The head's weights.
    loss_curve_ : list of float
        Mean training loss of each epoch.
    active_fraction_ : list of float
        Fraction of triplets (or anchors, for batch-hard) with a positive loss in each epoch
        (for the hinge loss; the soft margin's is never 0).
    error_curve_ : list of float
        Fraction of wrongly ordered training triplets in each epoch's batches (see
        ``stopping``).
    validation_scores_ : list of float or None
        Held-out triplet accuracy of each epoch, with ``early_stopping``.
    best_validation_score_ : float or None
        The best of those, whose weights were kept.
    n_iter_ : int
        Epochs run.
    feature_provenance_ : dict or None
        Provenance of the cache fitted on (backbone, weights, ...), checked at every read of a
        cache (:mod:`tripletsk.cache.provenance`); None for arrays and mappings.
    threshold_ : float
        Set by :meth:`fit_threshold`: the distance below which a pair is called "same".

    See Also
    --------
    tripletsk.evaluation.metrics : retrieval metrics (precision@1, MAP@R) to judge an embedding.

    Examples
    --------
    >>> import numpy as np
    >>> from tripletsk import TripletEncoder
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.normal(0, 1, (20, 8)), rng.normal(3, 1, (20, 8))]
    >>> y = np.r_[np.zeros(20), np.ones(20)]
    >>> enc = TripletEncoder(hidden_units=16, n_components=2, max_epochs=20, random_state=0)
    >>> enc.fit(X, y).transform(X).shape
    (40, 2)
    >>> T = np.array([[0, 1, 30], [25, 26, 3]])
    >>> TripletEncoder(features=X, hidden_units=16, max_epochs=5, random_state=0).fit(
    ...     T).predict_triplets(T).shape
    (2,)
    """

    _parameter_constraints: dict = {
        "features": [None, "array-like", str, os.PathLike, Mapping, object],
        "hidden_units": [
            Interval(Integral, 1, None, closed="left"),
            tuple,
            list,
            None,
            StrOptions({"auto"}),
        ],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "input_dropout": [Interval(Real, 0, 1, closed="left")],
        "distance": [StrOptions(set(DISTANCES))],
        "margin": [Interval(Real, 0, None, closed="left"), None],
        "soft_margin_scale": [Interval(Real, 0, None, closed="neither")],
        "mining": [StrOptions(set(MINING_WORDS))],
        "samples_per_class": [Interval(Integral, 2, None, closed="left"), StrOptions({"auto"})],
        "hard_per_anchor": [Interval(Integral, 1, None, closed="left")],
        "refresh_every": [Interval(Integral, 0, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "learning_rate_schedule": [StrOptions({"constant", "cosine"})],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "weight_averaging": [Interval(Real, 0, 1, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "stopping": [StrOptions({"auto", "error", "loss"})],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "standardize": ["boolean"],
        "random_state": ["random_state"],
        "verbose": [Interval(Integral, None, None, closed="neither"), "boolean"],
        "precision": [StrOptions({"float32", "bfloat16"})],
        "stream": ["boolean"],
    }

    def __init__(
        self,
        features=None,
        *,
        hidden_units="auto",
        n_components=64,
        dropout=0.0,
        input_dropout=0.1,
        distance="l2",
        margin=None,
        soft_margin_scale=4.0,
        mining="auto",
        samples_per_class="auto",
        hard_per_anchor=2,
        refresh_every=0,
        learning_rate=1e-3,
        learning_rate_schedule="constant",
        weight_decay=0.0,
        weight_averaging=0.9,
        batch_size=256,
        max_epochs=100,
        tol="auto",
        stopping="auto",
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        standardize=True,
        random_state=None,
        verbose=0,
        precision="float32",
        stream=False,
    ):
        self.features = features
        self.hidden_units = hidden_units
        self.n_components = n_components
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.distance = distance
        self.margin = margin
        self.soft_margin_scale = soft_margin_scale
        self.mining = mining
        self.samples_per_class = samples_per_class
        self.hard_per_anchor = hard_per_anchor
        self.refresh_every = refresh_every
        self.learning_rate = learning_rate
        self.learning_rate_schedule = learning_rate_schedule
        self.weight_decay = weight_decay
        self.weight_averaging = weight_averaging
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.tol = tol
        self.stopping = stopping
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.standardize = standardize
        self.random_state = random_state
        self.verbose = verbose
        self.precision = precision
        self.stream = stream

    def __setstate__(self, state):
        # Pickles of encoders made before the parameter existed: the plain soft margin.
        state.setdefault("soft_margin_scale", 1.0)
        super().__setstate__(state)

    @property
    def _n_features_out(self) -> int:
        """Width of the embedding, for ``get_feature_names_out`` (``tripletencoder0``, ...)."""
        return int(self.weights_[-1][0].shape[1])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # fit(X) needs y unless X holds triplets; the checks exercise the labelled mode.
        tags.target_tags.required = True
        # Embeddings are float32 whatever the input precision (the head's weights are).
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    # ------------------------------------------------------------------ fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the head on triplets ``fit(T)`` or on labelled samples ``fit(X, y)``.

        Parameters
        ----------
        X : array-like
            Triplets of shape (n, 3, d), or (n, 3) indices / keys into ``features``; or, with
            ``y``, samples of shape (n, d), or 1-d indices / keys into ``features``.
        y : array-like of shape (n_samples,), default=None
            Class labels of the samples in ``X``.

        Returns
        -------
        self : TripletEncoder
            The fitted estimator.

        Notes
        -----
        Cross-validate triplets over one set of images with ``cv=TripletImageKFold(...)``
        (:mod:`tripletsk.evaluation.model_selection`): plain ``cv=k`` splits triplets, not images,
        so training sees the test images (:meth:`score` then warns: ``SharedImagesWarning``).
        """
        rng = check_random_state(self.random_state)
        params, labelled = self.get_params(deep=False), y is not None
        check_params(params, labelled)  # before any row is read
        origin = ProvenanceCheck()  # records the provenance of a cache the rows come from
        # ``items`` describes the rows used without copying them: memory stays the features
        # plus O(batch). Rows are read (and standardised) a chunk or a window at a time.
        if labelled:
            items, labels = sources.labelled_rows(self.features, X, y, self._validate_xy, origin)
            triplets = None
        else:
            items, triplets = sources.triplet_rows(self.features, X, origin)
            labels = None
        self._fitted_images = None if labelled else fitted_images(self.features, X, items)
        self.n_features_in_, self.feature_provenance_ = items.n_features, origin.found
        config = TrainingConfig.from_params(params, n_features=items.n_features, labelled=labelled)
        for name, value in fit_head(config, items, triplets, labels, rng).items():
            setattr(self, name, value)
        return self

    def _validate_xy(self, X, y):
        return validate_data(self, X, y, dtype=np.float32, y_numeric=False)

    # ------------------------------------------------------------------ saving

    def save(self, path) -> None:
        """Save the fitted model to a ``.npz`` file that loads without executing code.

        Arrays, and parameters, history and ``feature_provenance_`` as JSON: safe to load from
        anyone. ``features`` is kept if a path (else pass it again to :meth:`load`).
        """
        check_is_fitted(self)
        persist.save_encoder(self, path)

    @classmethod
    def load(cls, path, features=None) -> TripletEncoder:
        """Load a model written by :meth:`save`; nothing in the file is executed."""
        return persist.load_encoder(cls, path, features)
