"""TripletEncoder: a scikit-learn estimator that learns an embedding with triplet loss."""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.metrics import pairwise_distances
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from tripletsk._rows import FeatureRows, array_take, block_windows, embed
from tripletsk.head import init_head_weights, normalize_hidden_units
from tripletsk.metrics import label_triplet_accuracy, triplet_accuracy
from tripletsk.shared import SharedFeatures
from tripletsk.store import FeatureStore
from tripletsk.triplets import pk_batches, sample_label_triplets

DEFAULT_CACHE = Path("cache") / "features.h5"

# How each training distance is spelled by sklearn.metrics.pairwise_distances.
_SKLEARN_METRIC = {"l1": "manhattan", "l2": "euclidean", "sqeuclidean": "sqeuclidean",
                   "cosine": "cosine"}  # fmt: skip
_LABEL_MINING = ("random", "batch_all", "batch_hard", "semi_hard", "hybrid")
_FORMAT_VERSION = 1


class EmbeddingCollapseWarning(UserWarning):
    """The learned embedding maps (nearly) every input to the same point."""


class TripletEncoder(TransformerMixin, BaseEstimator):
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
        cache of ``tripletsk extract-features`` (a :class:`~tripletsk.store.FeatureStore`);
        any mapping of key -> vector works too. ``None`` means inputs hold the feature vectors
        themselves, or, for string keys, the default cache ``cache/features.h5``.
        scikit-learn's ``clone`` (used by ``GridSearchCV``, ``cross_val_score``) deep-copies
        a plain array once per fit; wrap a large array as
        :class:`tripletsk.shared.SharedFeatures` (``features=SharedFeatures(X)``), which
        clones share instead of copying, or pass a cache path / ``FeatureStore``.
    hidden_units : int or tuple of int, default=512
        Sizes of the hidden ReLU layers; ``()`` makes a linear head.
    n_components : int, default=10
        Dimension of the embedding.
    dropout : float, default=0.2
        Dropout rate after each hidden layer while training.
    distance : {"l2", "l1", "sqeuclidean", "cosine"}, default="l2"
        Distance between embeddings, in the loss and in every prediction.
    margin : float or None, default=1.0
        Margin of the hinge loss ``max(d(a, p) - d(a, n) + margin, 0)``. ``None`` selects the
        soft margin ``log(1 + exp(d(a, p) - d(a, n)))``. Embeddings lie on the unit sphere,
        so L2 distances lie in [0, 2]; 1.0 scored best on held-out digits triplets (0.2, 0.5
        and 1.5 scored lower, see ``examples/digits_triplets.py``).
    mining : {"auto", "random", "batch_all", "batch_hard", "semi_hard", "hybrid", "hard"}, \
            default="auto"
        How ``fit(X, y)`` turns labels into triplets. ``"random"`` draws one random valid
        triplet per anchor each epoch; the others mine online inside P x K batches
        (``samples_per_class`` samples of ``batch_size // samples_per_class`` classes), see
        :mod:`tripletsk.losses`; ``"hybrid"`` adds, for the anchors of each batch, their hard
        positives and negatives found offline over the whole training set, then mines
        batch-hard. ``"auto"`` is ``"batch_hard"``. With ``fit(T)``, ``"auto"`` uses the given
        triplets as they are, and ``"hard"`` mines within what they state: each epoch, every
        anchor also gets a triplet of its currently farthest known positive and nearest known
        negative (those it appears with in any training triplet), on top of the given ones.
    samples_per_class : int, default=4
        K of the P x K batches of online mining.
    hard_per_anchor : int, default=2
        For ``mining="hybrid"``: hard positives and hard negatives kept per anchor.
    refresh_every : int, default=0
        For ``mining="hybrid"``: every this many epochs, find the hard examples again on the
        current embeddings instead of the frozen features; 0 never refreshes.
    learning_rate : float, default=1e-3
        Adam's learning rate.
    batch_size : int, default=256
        Triplets per step for ``fit(T)`` and ``mining="random"``; samples per P x K batch for
        online mining.
    max_epochs : int, default=100
        Maximum number of passes over the training data.
    tol : float, default=1e-4
        Minimum improvement of the training loss (or of the validation score with
        ``early_stopping``) that resets the ``n_iter_no_change`` count.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (triplets, or samples
        stratified by label), stop when its triplet accuracy stops improving, and keep the
        weights of the best epoch.
    validation_fraction : float, default=0.1
        Share of the training data held out with ``early_stopping``.
    n_iter_no_change : int, default=10
        Epochs without improvement before stopping.
    standardize : bool, default=True
        Scale each input feature to zero mean and unit variance on the training data before
        the head. CNN features have large positive means; without this, a ReLU head can
        collapse to one point.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, dropout, batch order and triplet sampling. The same value
        gives the same embeddings; global random state is never touched.
    verbose : int, default=0
        Print the loss of each epoch when positive.
    precision : {"float32", "bfloat16"}, default="float32"
        Arithmetic of the head's matrix products while training. ``"bfloat16"`` uses Keras'
        ``mixed_bfloat16`` policy on the head's layers only (float32 weights, optimizer and
        loss; the global Keras policy is untouched). It is faster only where the hardware
        multiplies bfloat16 natively (CPUs with AVX512-BF16 or AMX, recent GPUs); the fitted
        weights and inference stay float32. See ``benchmarks/README.md`` for measured speed
        and accuracy.
    stream : bool, default=False
        Read the features in storage order, for caches larger than memory. A fit never copies
        the whole set of features: it keeps one standardised copy of the rows it trains on
        while they fit in 1 GiB (faster epochs), else reads them per epoch in 64 MiB windows;
        a cache is memory-mapped, so only the pages read are held, and the operating system
        can drop them again. By default rows are read in random order. With ``stream=True``
        (always windows) each epoch visits
        the rows in blocks of consecutive rows (2 MiB, or whole HDF5 chunks) in a random
        order of blocks, a 64 MiB window of blocks at a time: labelled batches are drawn within
        a window, given triplets are grouped by their anchor's block. Every block is then read
        once per epoch, sequentially, instead of row by row. Batches draw on one window rather
        than on the whole set, so results differ a little from ``stream=False``; see
        ``docs/scaling.md``.

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
        Fraction of triplets (or anchors, for batch-hard) with a positive loss in each epoch.
    validation_scores_ : list of float or None
        Held-out triplet accuracy of each epoch, with ``early_stopping``.
    best_validation_score_ : float or None
        The best of those, whose weights were kept.
    n_iter_ : int
        Epochs run.
    threshold_ : float
        Set by :meth:`fit_threshold`: the distance below which a pair is called "same".

    See Also
    --------
    tripletsk.metrics : retrieval metrics (precision@1, MAP@R) to judge an embedding.

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
        "hidden_units": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "distance": [StrOptions({"l1", "l2", "sqeuclidean", "cosine"})],
        "margin": [Interval(Real, 0, None, closed="left"), None],
        "mining": [StrOptions({"auto", "hard", *_LABEL_MINING})],
        "samples_per_class": [Interval(Integral, 2, None, closed="left")],
        "hard_per_anchor": [Interval(Integral, 1, None, closed="left")],
        "refresh_every": [Interval(Integral, 0, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "standardize": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "precision": [StrOptions({"float32", "bfloat16"})],
        "stream": ["boolean"],
    }

    def __init__(
        self,
        features=None,
        *,
        hidden_units=512,
        n_components=10,
        dropout=0.2,
        distance="l2",
        margin=1.0,
        mining="auto",
        samples_per_class=4,
        hard_per_anchor=2,
        refresh_every=0,
        learning_rate=1e-3,
        batch_size=256,
        max_epochs=100,
        tol=1e-4,
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
        self.distance = distance
        self.margin = margin
        self.mining = mining
        self.samples_per_class = samples_per_class
        self.hard_per_anchor = hard_per_anchor
        self.refresh_every = refresh_every
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.standardize = standardize
        self.random_state = random_state
        self.verbose = verbose
        self.precision = precision
        self.stream = stream

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
        """
        rng = check_random_state(self.random_state)
        hidden = normalize_hidden_units(self.hidden_units)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden_units must be positive integers; got {self.hidden_units}.")
        if y is None:
            if self.mining not in ("auto", "hard"):
                raise ValueError(
                    f"mining={self.mining!r} mines triplets from labels: call fit(X, y). "
                    "fit(T) with triplets takes mining='auto' (as given) or 'hard'."
                )
            items, triplets = self._triplet_items(X, fitting=True)
            labels = None
        else:
            if self.mining == "hard":
                raise ValueError(
                    "mining='hard' mines within given triplets, for fit(T); with labels use "
                    "'batch_hard' or 'hybrid'."
                )
            items, labels = self._labelled_items(X, y)
            triplets = None
        # ``items`` describes the rows used without copying them: memory stays the features
        # plus O(batch). Rows are read (and standardised) a chunk or a window at a time.
        self._fit_scaler(items)
        items = items.standardized(self.feature_mean_, self.feature_scale_)

        train, validation_score = self._split_validation(items, triplets, labels, rng)
        mining = self._effective_mining(labels)
        init = init_head_weights(items.n_features, hidden, self.n_components, rng)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        batch_rng = np.random.RandomState(rng.randint(np.iinfo(np.int32).max))
        epoch_batches = self._batch_plan(items, triplets, labels, train, mining, batch_rng)

        from tripletsk._training import train_head  # TensorFlow is needed only from here

        if self.precision == "bfloat16":
            from tripletsk.backends import warn_if_bfloat16_is_emulated

            warn_if_bfloat16_is_emulated("Training", stacklevel=4)  # the caller of fit

        result = train_head(
            items,
            init,
            epoch_batches,
            labels=None if labels is None else np.unique(labels, return_inverse=True)[1],
            distance=self.distance,
            margin=self.margin,
            # hybrid batches carry offline hard examples, then mine batch-hard online.
            mining="batch_hard" if mining == "hybrid" else mining,
            dropout=self.dropout,
            learning_rate=self.learning_rate,
            max_epochs=self.max_epochs,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
            validation_score=validation_score,
            seed=seed,
            verbose=self.verbose,
            precision=self.precision,
            stream=self.stream,
        )
        self.weights_ = result.weights
        self.loss_curve_ = result.loss_curve
        self.active_fraction_ = result.active_fraction
        self.validation_scores_ = result.validation_scores if self.early_stopping else None
        self.best_validation_score_ = result.best_validation_score
        self.n_iter_ = result.n_iter
        self._warn_if_collapsed(items, rng)
        return self

    def _effective_mining(self, labels) -> str:
        if labels is None:
            return "hard" if self.mining == "hard" else "given"
        return "batch_hard" if self.mining == "auto" else self.mining

    def _fit_scaler(self, items: FeatureRows) -> None:
        self.n_features_in_ = d = items.n_features
        # One pass over the rows: checks them (NaN, infinity) and gives the statistics.
        mean, variance = items.checked_mean_and_variance()
        if self.standardize:
            # Centre each feature, then divide by one overall scale (the root mean variance).
            # Per-feature unit variance would blow up near-constant features (rare pixels,
            # rarely firing CNN channels) into noise as loud as the informative ones.
            self.feature_mean_ = mean.astype(np.float32)
            scale = float(np.sqrt(variance.mean()))
            scale = scale if scale > 10 * np.finfo(np.float32).eps else 1.0
            self.feature_scale_ = np.full(d, scale, dtype=np.float32)
        else:
            self.feature_mean_ = np.zeros(d, dtype=np.float32)
            self.feature_scale_ = np.ones(d, dtype=np.float32)

    def _scale(self, items: np.ndarray) -> np.ndarray:
        # One new float32 array, scaled in place: features can be most of the memory.
        scaled = np.subtract(items, self.feature_mean_, dtype=np.float32)
        scaled /= self.feature_scale_
        return scaled

    def _split_validation(self, items: FeatureRows, triplets, labels, rng):
        """Training rows (triplet rows or sample rows) and the validation scorer, if any."""
        n = len(triplets) if triplets is not None else len(labels)
        everything = np.arange(n)
        if not self.early_stopping:
            return everything, None
        if labels is None:
            train, held = train_test_split(
                everything, test_size=self.validation_fraction, random_state=rng
            )
            # Only the held-out triplets' items are embedded to score an epoch.
            held_items, held_triplets = np.unique(triplets[held], return_inverse=True)
            held_triplets = held_triplets.reshape(-1, 3)

            def score(weights):
                d_ap, d_an = self._paired(embed(items, weights, held_items), held_triplets)
                return triplet_accuracy(d_ap, d_an)

            return train, score
        _, counts = np.unique(labels, return_counts=True)
        stratify = labels if counts.min() >= 2 else None
        try:
            train, held = train_test_split(
                everything, test_size=self.validation_fraction, random_state=rng,
                stratify=stratify,
            )  # fmt: skip
        except ValueError as exc:
            raise ValueError(
                f"early_stopping could not hold out validation_fraction="
                f"{self.validation_fraction} of {n} samples: {exc}"
            ) from exc
        # In item order, so passes over the training items (hybrid's offline mining) read a
        # cache forward when the items are in the cache's order, not at random.
        train = np.sort(train)
        metric = _SKLEARN_METRIC[self.distance]

        def score(weights):
            try:
                return label_triplet_accuracy(embed(items, weights, held), labels[held], metric)
            except ValueError:  # the held-out labels define no triplet
                return 0.0

        return train, score

    def _batch_plan(self, items: FeatureRows, triplets, labels, train, mining, rng):
        """A function epoch -> batches of indices into ``items``, for the training loop."""
        batch_size = self.batch_size
        # Rows of features per training window (see _training.py): with stream=True, an
        # epoch visits the rows window by window, each window made of whole storage blocks.
        from tripletsk._training import WINDOW_BYTES

        window_rows = max(1, WINDOW_BYTES // (4 * items.n_features))
        if labels is None:
            train_triplets = triplets[train]

            def given(epoch, weights):
                epoch_triplets = train_triplets
                if mining == "hard":
                    mined = _hardest_known(train_triplets, embed(items, weights), self.distance)
                    epoch_triplets = np.concatenate([train_triplets, mined])
                if self.stream:  # by the storage block of each triplet's anchor
                    anchor_rows = items.rows[epoch_triplets[:, 0]]
                    windows = block_windows(anchor_rows, items.block_rows, window_rows // 3, rng)
                    order = np.concatenate(windows)
                else:
                    order = rng.permutation(len(epoch_triplets))
                for start in range(0, len(order), batch_size):
                    yield epoch_triplets[order[start : start + batch_size]]

            return given

        def windows():
            """Positions into ``train``: all at once, or block windows when streaming."""
            if not self.stream:
                return [np.arange(len(train))]
            return block_windows(items.rows[train], items.block_rows, window_rows, rng)

        train_labels = labels[train]
        if mining == "random":

            def random_triplets(epoch, weights):
                for window in windows():
                    try:
                        sampled = sample_label_triplets(train_labels[window], random_state=rng)
                    except ValueError:
                        if not self.stream:
                            raise
                        continue  # a streamed window with a single class or no pair: skip it
                    sampled = train[window[sampled]]
                    for start in range(0, len(sampled), batch_size):
                        yield sampled[start : start + batch_size]

            return random_triplets
        k = self.samples_per_class
        p = max(2, batch_size // k)
        hard = None
        if mining == "hybrid":
            hard = _offline_hard_examples(items.select(train), train_labels, self.hard_per_anchor)

        def pk(epoch, weights):
            nonlocal hard
            if (
                hard is not None
                and self.refresh_every
                and epoch
                and epoch % self.refresh_every == 0
            ):
                # Re-mine with the head as trained so far: what is hard changes as it learns.
                embedded = embed(items, weights, train)
                hard = _offline_hard_examples(embedded, train_labels, self.hard_per_anchor)
            for window in windows():
                for batch in pk_batches(train_labels[window], p, k, random_state=rng):
                    batch = window[batch]
                    if hard is not None:
                        batch = _with_hard_examples(batch, hard, p, rng)
                    yield train[batch]

        return pk

    def _warn_if_collapsed(self, items: FeatureRows, rng) -> None:
        emb = embed(items, self.weights_, np.sort(rng.permutation(len(items))[:2000]))
        spread = float(np.linalg.norm(emb - emb.mean(axis=0), axis=1).mean())
        stuck = (
            self.margin is not None
            and self.loss_curve_
            and abs(self.loss_curve_[-1] - self.margin) < 1e-3 * max(self.margin, 1e-3)
        )
        if spread < 1e-3:
            what = f"the embedding collapsed (mean distance to the centre {spread:.2e})"
        elif stuck:
            what = (
                f"the loss stayed at the margin ({self.loss_curve_[-1]:.4f}, margin "
                f"{self.margin}): anchors are no closer to positives than to negatives, so "
                "nothing was learned (or the triplets carry no signal)"
            )
        else:
            return
        warnings.warn(
            f"Training failed: {what}. Keep standardize=True, lower learning_rate, or check "
            "that the features differ between images and the triplets agree with them.",
            EmbeddingCollapseWarning,
            stacklevel=3,
        )

    # ------------------------------------------------------------------ inputs

    def _feature_rows(self, ids) -> tuple[FeatureRows, np.ndarray]:
        """The distinct items of ``ids`` as rows of ``features``, and ``ids`` as indices into them.

        Rows are described, not copied: an array, :class:`~tripletsk.shared.SharedFeatures` or
        feature cache is read later, a chunk at a time. Only a mapping (or another object with
        just a ``lookup`` method) is gathered into a new array here.
        """
        ids = np.asarray(ids)
        if ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
            ids = ids.astype(np.int64)  # e.g. indices that went through a float array
        if ids.dtype.kind not in "iuUSO":
            raise ValueError(
                f"With features set, items must be integer indices or string keys; got dtype "
                f"{ids.dtype}."
            )
        if ids.dtype.kind == "O":
            ids = ids.astype(str)
        unique, inverse = np.unique(ids, return_inverse=True)
        inverse = inverse.reshape(ids.shape)
        features = self.features
        is_text = ids.dtype.kind in "US"
        if features is None:
            if not is_text:
                raise ValueError(
                    "Integer indices need features=: pass the (n_samples, d) array they index."
                )
            features = str(DEFAULT_CACHE)
            if not DEFAULT_CACHE.exists():
                raise ValueError(
                    f"Image keys need a feature cache, and the default one ({DEFAULT_CACHE}) "
                    "does not exist: run `tripletsk extract-features IMAGES_DIR` first, or "
                    "pass features= (a cache path, a FeatureStore or a key -> vector mapping)."
                )
        if isinstance(features, str | os.PathLike):
            features = _open_cache(features)
        try:
            if isinstance(features, FeatureStore | SharedFeatures):
                # Row numbers now, features when read (their take can fill a buffer).
                rows = FeatureRows(
                    features.take,
                    features.indices(unique),
                    features.dim,
                    chunk_rows=getattr(features, "chunk_rows", None),
                    prefetch=getattr(features, "prefetch", None),
                )
                return rows, inverse
            if hasattr(features, "lookup"):
                gathered = features.lookup(unique)
            elif isinstance(features, Mapping):
                gathered = _lookup_mapping(features, unique)
            else:
                return _array_rows(features, unique, is_text), inverse
        except KeyError as exc:  # a store's unknown key: keep its message, as a ValueError
            raise ValueError(exc.args[0] if exc.args else str(exc)) from exc
        gathered = check_array(np.asarray(gathered), dtype=np.float32, input_name="features")
        return FeatureRows.from_array(gathered), inverse

    def _triplet_items(self, T, fitting: bool = False):
        """Distinct items of triplets ``T`` as (m, d) features, and (n, 3) indices into them."""
        if isinstance(T, str | os.PathLike):
            raise ValueError(
                "Triplets must be an array; to read a triplet file use "
                "tripletsk.triplets.read_triplets(path)."
            )
        T = np.asarray(T)
        if T.size == 0:
            raise ValueError(f"Found an empty array of triplets (shape {T.shape}); need n >= 1.")
        if T.ndim == 3 and T.shape[1] == 3:
            flat = check_array(T.reshape(-1, T.shape[2]), dtype=np.float32, input_name="triplets")
            # One row per distinct vector, as for keys: an image in many triplets counts once
            # in the standardisation and is embedded once per batch.
            items, inverse = np.unique(flat, axis=0, return_inverse=True)
            self._check_width(items.shape[1], fitting)
            return FeatureRows.from_array(items), inverse.reshape(-1, 3)
        # (n, 3) ids: always with features=; without, keys use the default cache and integer
        # indices get _feature_source's "need features=" error. Float rows need labels.
        if (
            T.ndim == 2
            and T.shape[1] == 3
            and (self.features is not None or T.dtype.kind in "iuUSO")
        ):
            items, inverse = self._feature_rows(_as_ids(T))
            self._check_width(items.n_features, fitting)
            return items, inverse
        if T.ndim == 2:
            raise _needs_y_error(T)
        raise ValueError(
            f"Triplets must have shape (n, 3, d) (feature vectors) or (n, 3) (indices or keys "
            f"into features); got shape {T.shape}."
        )

    def _labelled_items(self, X, y):
        X_arr = np.asarray(X) if not hasattr(X, "iloc") else X
        if self.features is not None and np.ndim(X_arr) == 1:
            distinct, inverse = self._feature_rows(np.asarray(X_arr))
            items = distinct.select(inverse)  # one item per sample, repeats included
            y = np.asarray(y)
            if len(y) != len(items):
                raise ValueError(f"X has {len(items)} items but y has {len(y)} labels.")
        else:
            X, y = validate_data(self, X, y, dtype=np.float32, y_numeric=False)
            items = FeatureRows.from_array(X)
        if y.ndim != 1:
            raise ValueError(f"y should be a 1d array of class labels; got shape {y.shape}.")
        from sklearn.utils.multiclass import check_classification_targets

        check_classification_targets(y)
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise ValueError(
                f"Learning from labels needs at least 2 classes; got {len(classes)} class "
                f"in {len(y)} samples."
            )
        if counts.max() < 2:
            raise ValueError(
                "Learning from labels needs a class with at least 2 samples to form a positive "
                f"pair; each of the {len(classes)} classes has one sample."
            )
        return items, y

    def _check_width(self, n_features: int, fitting: bool) -> None:
        if not fitting and n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but TripletEncoder is expecting "
                f"{self.n_features_in_} features as input."
            )

    def _embed(self, items: FeatureRows) -> np.ndarray:
        """Embeddings of ``items``, standardised and embedded a chunk at a time."""
        return embed(items.standardized(self.feature_mean_, self.feature_scale_), self.weights_)

    # ------------------------------------------------------------------ inference

    def transform(self, X) -> np.ndarray:
        """Embed samples: rows of features, or indices / keys into ``features``.

        Parameters
        ----------
        X : array-like of shape (n, d), or (n,) indices or keys

        Returns
        -------
        embeddings : ndarray of shape (n, n_components)
            L2-normalised embeddings.
        """
        check_is_fitted(self)
        if self.features is not None and np.ndim(X) == 1:  # indices or keys into features
            items, inverse = self._feature_rows(np.asarray(X))
            self._check_width(items.n_features, fitting=False)
            return self._embed(items)[inverse]
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return self._embed(FeatureRows.from_array(X))

    def _paired(self, emb: np.ndarray, triplets: np.ndarray):
        a, p, n = emb[triplets[:, 0]], emb[triplets[:, 1]], emb[triplets[:, 2]]
        return _paired_distance(a, p, self.distance), _paired_distance(a, n, self.distance)

    def decision_function(self, T) -> np.ndarray:
        """``d(anchor, negative) - d(anchor, positive)`` for each triplet: positive when right.

        Parameters
        ----------
        T : array-like of shape (n, 3, d), or (n, 3) indices or keys into ``features``

        Returns
        -------
        margin : ndarray of shape (n,)
        """
        check_is_fitted(self)
        items, triplets = self._triplet_items(T)
        d_ap, d_an = self._paired(self._embed(items), triplets)
        return d_an - d_ap

    def predict_triplets(self, T) -> np.ndarray:
        """1 where the anchor is closer to the positive than to the negative, else 0 (ties: 0).

        Parameters
        ----------
        T : array-like of shape (n, 3, d), or (n, 3) indices or keys into ``features``

        Returns
        -------
        predictions : ndarray of shape (n,), dtype int
        """
        return (self.decision_function(T) > 0).astype(int)

    def score(self, X, y=None) -> float:
        """Triplet accuracy.

        ``score(T)`` is the mean of :meth:`predict_triplets` over triplets ``T``.
        ``score(X, y)`` is the accuracy over every valid (anchor, positive, negative) triplet
        that the labels ``y`` define, computed exactly by ranking distances per anchor.

        Returns
        -------
        accuracy : float
        """
        if y is None:
            return float(np.mean(self.predict_triplets(X)))
        return label_triplet_accuracy(self.transform(X), np.asarray(y),
                                      _SKLEARN_METRIC[self.distance])  # fmt: skip

    # ------------------------------------------------------------------ pairs

    def pair_distance(self, A, B) -> np.ndarray:
        """Embedding distance between matching items of ``A`` and ``B``."""
        return _paired_distance(self.transform(A), self.transform(B), self.distance)

    def fit_threshold(self, A, B, same, criterion: str = "balanced_accuracy"):
        """Choose the "same / different" distance threshold on validation pairs.

        Never call this with test pairs: a threshold tuned on test data inflates the test
        figure. ``same`` is 1 for pairs of the same class. Sets ``threshold_``.
        """
        from tripletsk.metrics import choose_threshold

        check_is_fitted(self)
        self.threshold_ = float(
            choose_threshold(self.pair_distance(A, B), np.asarray(same), criterion=criterion)
        )
        return self

    def predict_pairs(self, A, B) -> np.ndarray:
        """1 ("same") where the pair's distance is at most ``threshold_``, else 0."""
        check_is_fitted(self, "threshold_")
        return (self.pair_distance(A, B) <= self.threshold_).astype(int)

    # ------------------------------------------------------------------ saving

    def save(self, path) -> None:
        """Save the fitted model to a ``.npz`` file that loads without executing code.

        Weights and standardisation are stored as arrays, parameters and history as JSON.
        Unlike joblib or pickle files, such a file is safe to load when it comes from someone
        else. ``features`` is kept only when it is a path (an array or mapping is not saved:
        pass it again to :meth:`load`).
        """
        check_is_fitted(self)
        params = self.get_params()
        features = params.pop("features")
        params["random_state"] = (
            params["random_state"] if isinstance(params["random_state"], int | None) else None
        )
        params["hidden_units"] = list(normalize_hidden_units(params["hidden_units"]))
        meta = {
            "format": "tripletsk.TripletEncoder",
            "format_version": _FORMAT_VERSION,
            "params": params,
            "features": os.fspath(features) if isinstance(features, str | os.PathLike) else None,
            "n_features_in_": self.n_features_in_,
            "n_iter_": self.n_iter_,
            "loss_curve_": self.loss_curve_,
            "active_fraction_": self.active_fraction_,
            "validation_scores_": self.validation_scores_,
            "best_validation_score_": self.best_validation_score_,
            "threshold_": getattr(self, "threshold_", None),
        }
        arrays = {"feature_mean": self.feature_mean_, "feature_scale": self.feature_scale_}
        for i, (kernel, bias) in enumerate(self.weights_):
            arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = kernel, bias
        with open(path, "wb") as file:
            np.savez(file, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path, features=None) -> TripletEncoder:
        """Load a model written by :meth:`save`; nothing in the file is executed."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != "tripletsk.TripletEncoder":
                raise ValueError(f"{path} is not a tripletsk model saved with save().")
            n_layers = sum(1 for name in data.files if name.startswith("kernel_"))
            weights = [(data[f"kernel_{i}"], data[f"bias_{i}"]) for i in range(n_layers)]
            mean, scale = data["feature_mean"], data["feature_scale"]
        params = meta["params"]
        params["hidden_units"] = tuple(params["hidden_units"])
        model = cls(features=features if features is not None else meta["features"], **params)
        model.weights_, model.feature_mean_, model.feature_scale_ = weights, mean, scale
        for name in ("n_features_in_", "n_iter_", "loss_curve_", "active_fraction_",
                     "validation_scores_", "best_validation_score_"):  # fmt: skip
            setattr(model, name, meta[name])
        if meta["threshold_"] is not None:
            model.threshold_ = meta["threshold_"]
        return model


# ---------------------------------------------------------------------- helpers


def _open_cache(path):
    """The FeatureStore of a cache path, opened once per version of the file.

    Opening reads every key to build the key index; ``transform`` and ``search`` call lookups
    chunk by chunk, so reopening each time would repeat that work. The file's identity (inode,
    size, modification time) is part of the cache key: extraction replaces the file atomically,
    so a re-extracted cache is opened afresh.
    """
    path = os.path.abspath(os.fspath(path))
    try:
        stat = os.stat(path)
    except OSError:
        stat = None  # let FeatureStore raise its own, clear error
    identity = None if stat is None else (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return _open_cache_version(path, identity)


@functools.lru_cache(maxsize=4)
def _open_cache_version(path: str, identity):
    return FeatureStore(path)


def _needs_y_error(T: np.ndarray) -> ValueError:
    return ValueError(
        f"TripletEncoder requires y to be passed, but the target y is None: X of shape "
        f"{T.shape} is neither triplets of feature vectors (n, 3, d) nor triplets of indices "
        "or keys (n, 3) into features=. Call fit(X, y) with class labels, or fit(T) with "
        "triplets."
    )


def _as_ids(T: np.ndarray) -> np.ndarray:
    if T.dtype.kind == "O":
        return T.astype(str)
    return T


def _check_indices(idx: np.ndarray, n: int) -> np.ndarray:
    if idx.dtype.kind not in "iu":
        raise ValueError(f"Indices into features must be integers; got dtype {idx.dtype}.")
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} indices are outside the {n} rows of features (valid: 0 to "
            f"{n - 1}), e.g. {idx[bad][:5].tolist()}."
        )
    return idx


def _array_rows(features, ids: np.ndarray, is_text: bool) -> FeatureRows:
    """Rows ``ids`` of a 2-d feature array, read (and converted to float32) when used."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(
            f"features must be a 2-d array (n_samples, n_features); got shape {array.shape}."
        )
    if is_text:
        raise ValueError(
            "features is an array, so items must be integer row indices; got strings "
            f"such as {ids.ravel()[0]!r}. Pass a feature cache or a mapping for keys."
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(f"features must be numeric; got an array of dtype {array.dtype}.")
    return FeatureRows(array_take(array), _check_indices(ids, len(array)), array.shape[1])


def _lookup_mapping(mapping: Mapping, keys: np.ndarray) -> np.ndarray:
    missing = [k for k in keys.tolist() if k not in mapping]
    if missing:
        raise ValueError(
            f"{len(missing)} keys are not in features (of {len(mapping)} keys), e.g. {missing[:5]}."
        )
    return np.stack([np.asarray(mapping[k], dtype=np.float32) for k in keys.tolist()])


def _paired_distance(a: np.ndarray, b: np.ndarray, distance: str) -> np.ndarray:
    """NumPy twin of :func:`tripletsk.losses.paired_distance`, for inference."""
    if distance == "l1":
        return np.abs(a - b).sum(axis=1)
    if distance == "cosine":
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return 1.0 - np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)
    squared = np.einsum("ij,ij->i", a - b, a - b)
    return squared if distance == "sqeuclidean" else np.sqrt(squared)


def _hardest_known(triplets: np.ndarray, embeddings: np.ndarray, distance: str) -> np.ndarray:
    """Per anchor: (anchor, farthest of its known positives, nearest of its known negatives).

    "Known" means stated by some triplet with the same anchor, so no constraint is invented
    beyond "the anchor's positives are closer than its negatives".
    """

    def extreme(column: int, farthest: bool) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.unique(triplets[:, [0, column]], axis=0)
        d = _paired_distance(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], distance)
        order = np.lexsort((-d if farthest else d, pairs[:, 0]))
        anchors, first = np.unique(pairs[order, 0], return_index=True)
        return anchors, pairs[order[first], 1]

    anchors, hard_pos = extreme(1, farthest=True)
    _, hard_neg = extreme(2, farthest=False)  # same sorted anchors: every anchor has both
    return np.stack([anchors, hard_pos, hard_neg], axis=1)


def _offline_hard_examples(features, labels, per_anchor: int, chunk_size: int = 1024):
    """For each sample: its ``per_anchor`` farthest same-class and nearest other-class samples.

    ``features`` is an array or :class:`FeatureRows` (read a chunk at a time, never whole).
    Distances are Euclidean on the (standardised) input features, computed for a chunk of
    anchors against a chunk of candidates at a time, keeping the running best. Returns
    (hard_positives, hard_negatives), each (n, per_anchor) indices, -1 where a class has
    fewer members.
    """
    if isinstance(features, FeatureRows):
        take, candidates_per_chunk = features.take, features.chunk_size
    else:
        take, candidates_per_chunk = features.__getitem__, 8 * chunk_size
    n = len(labels)
    hard_pos = np.full((n, per_anchor), -1, dtype=np.int64)
    hard_neg = np.full((n, per_anchor), -1, dtype=np.int64)
    for start in range(0, n, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n))
        anchors = take(rows)
        # Running best: distances, with -inf / inf meaning "none yet".
        pos_d = np.full((len(rows), per_anchor), -np.inf)
        neg_d = np.full((len(rows), per_anchor), np.inf)
        pos_i = np.full((len(rows), per_anchor), -1, dtype=np.int64)
        neg_i = np.full((len(rows), per_anchor), -1, dtype=np.int64)
        for c_start in range(0, n, candidates_per_chunk):
            cols = np.arange(c_start, min(c_start + candidates_per_chunk, n))
            dist = pairwise_distances(anchors, take(cols))
            same = labels[rows][:, None] == labels[cols][None, :]
            pos = np.where(same & (rows[:, None] != cols[None, :]), dist, -np.inf)
            neg = np.where(same, np.inf, dist)
            pos_d, pos_i = _keep_best(pos_d, pos_i, -pos, cols, per_anchor, negate=True)
            neg_d, neg_i = _keep_best(neg_d, neg_i, neg, cols, per_anchor)
        hard_pos[rows] = np.where(np.isfinite(pos_d), pos_i, -1)
        hard_neg[rows] = np.where(np.isfinite(neg_d), neg_i, -1)
    return hard_pos, hard_neg


def _keep_best(best_d, best_i, d, cols, k, negate=False):
    """Merge candidates ``d`` (smaller is better) for columns ``cols`` into the running best k."""
    keyed = -best_d if negate else best_d
    all_d = np.concatenate([keyed, d], axis=1)
    all_i = np.concatenate([best_i, np.broadcast_to(cols, d.shape)], axis=1)
    order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(all_d, order, 1)
    return (-chosen if negate else chosen), np.take_along_axis(all_i, order, 1)


def _with_hard_examples(batch, hard, n_anchors, rng):
    """Add the offline hard positives and negatives of up to ``n_anchors`` batch anchors."""
    hard_pos, hard_neg = hard
    anchors = rng.choice(batch, size=min(n_anchors, len(batch)), replace=False)
    extra = np.concatenate([hard_pos[anchors].ravel(), hard_neg[anchors].ravel()])
    extra = extra[extra >= 0]
    return np.concatenate([batch, np.setdiff1d(extra, batch)])
