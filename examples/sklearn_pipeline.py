"""TripletEncoder inside scikit-learn: a Pipeline with a k-NN classifier, and grid searches.

Two ways to supervise the encoder, each tuned with GridSearchCV:

1. Labelled mode, ``fit(X, y)``: ``Pipeline(TripletEncoder, KNeighborsClassifier)``; triplets
   are mined from the class labels, and the grid search scores the classifier's accuracy.
2. Triplet mode, ``fit(T)``: ``T`` holds (anchor, positive, negative) row indices into
   ``features``; the grid search scores with the encoder's own ``score`` (triplet accuracy).
   Triplets that share an image are not independent, so triplets are made within disjoint
   parts of the images and the parts are the cross-validation groups (``GroupKFold``).

The features here are the 64 pixels of scikit-learn's 8x8 digits, so this runs offline in
one to two minutes on 2 cores (2-fold cross-validation keeps it quick; each fit stops by itself
when it has learned, without a warning); with a feature cache, pass
``features="cache/features.h5"`` and image keys instead. The grids compare the soft margin (the
default, ``margin=None``) with a hinge margin of 0.2.

Usage::

    python examples/sklearn_pipeline.py [--epochs 100]
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline

from tripletsk import TripletEncoder
from tripletsk.triplets.mining import sample_label_triplets


def labelled_mode(X_train, X_test, y_train, y_test, epochs: int) -> None:
    """Grid-search the encoder of a Pipeline(TripletEncoder, 1-NN) on classification accuracy."""
    pipe = Pipeline(
        [
            ("embed", TripletEncoder(max_epochs=epochs, random_state=0)),
            ("knn", KNeighborsClassifier(n_neighbors=1)),
        ]
    )
    grid = GridSearchCV(pipe, {"embed__margin": [None, 0.2], "embed__n_components": [16, 64]}, cv=2)
    grid.fit(X_train, y_train)
    raw = KNeighborsClassifier(n_neighbors=1).fit(X_train, y_train).score(X_test, y_test)
    print(f"labelled mode: best {grid.best_params_}, cv accuracy {grid.best_score_:.3f}")
    print(
        f"labelled mode: test accuracy {grid.score(X_test, y_test):.3f} "
        f"(1-NN on raw pixels: {raw:.3f})"
    )


def triplets_within_parts(y, n_parts: int, per_part: int, seed: int = 0):
    """Triplets of row indices drawn within disjoint parts of the rows, and each one's part."""
    folds = StratifiedKFold(n_parts, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    triplets, groups = [], []
    for part, (_, rows) in enumerate(folds):
        local = sample_label_triplets(y[rows], per_part, random_state=seed + part)
        triplets.append(rows[local])  # back to row numbers of the whole array
        groups.append(np.full(len(local), part))
    return np.concatenate(triplets), np.concatenate(groups)


def triplet_mode(X_train, X_test, y_train, y_test, epochs: int) -> None:
    """Grid-search margin and distance on triplet accuracy, with leak-free group folds."""
    T, groups = triplets_within_parts(y_train, n_parts=2, per_part=900)
    encoder = TripletEncoder(features=X_train, max_epochs=epochs, random_state=0)
    grid = GridSearchCV(
        encoder, {"margin": [None, 0.2], "distance": ["l2", "cosine"]}, cv=GroupKFold(2)
    )
    grid.fit(T, groups=groups)  # scoring=None: TripletEncoder.score, the triplet accuracy
    # Test triplets as feature vectors, shape (n, 3, 64): they need no features= to look up.
    T_test = X_test[sample_label_triplets(y_test, 1000, random_state=1)]
    print(f"triplet mode: best {grid.best_params_}, cv triplet accuracy {grid.best_score_:.3f}")
    a, p, n = T_test[:, 0], T_test[:, 1], T_test[:, 2]
    raw = np.mean(np.linalg.norm(a - p, axis=1) < np.linalg.norm(a - n, axis=1))
    print(
        f"triplet mode: held-out triplet accuracy {grid.score(T_test):.3f} "
        f"(raw pixel distances: {raw:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=100,
        help="max_epochs of each fit (default 100: each fit stops by itself when it has learned)",
    )
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X.astype(np.float32), y, test_size=0.3, stratify=y, random_state=0
    )
    labelled_mode(X_train, X_test, y_train, y_test, args.epochs)
    triplet_mode(X_train, X_test, y_train, y_test, args.epochs)


if __name__ == "__main__":
    main()
