"""Judging a model: metrics, leakage-safe splits, search, calibrated matching and plots.

``metrics`` (triplet accuracy, P@1, recall@k, MAP@R), ``pairs`` (pair verification at a
threshold), ``model_selection`` (splits that keep an image on one side), ``search`` (nearest
neighbours of queries in memory), ``matching`` (a distance threshold at a chosen precision),
``plotting`` (loss curves, distance histograms, neighbour sheets; matplotlib).
"""

from tripletsk._lazy import lazy_getattr

_LAZY = {
    "triplet_accuracy": "tripletsk.evaluation.metrics",
    "label_triplet_accuracy": "tripletsk.evaluation.metrics",
    "precision_at_1": "tripletsk.evaluation.metrics",
    "recall_at_k": "tripletsk.evaluation.metrics",
    "r_precision": "tripletsk.evaluation.metrics",
    "map_at_r": "tripletsk.evaluation.metrics",
    "retrieval_report": "tripletsk.evaluation.metrics",
    "make_recall_at_k_scorer": "tripletsk.evaluation.metrics",
    "SCORERS": "tripletsk.evaluation.metrics",
    "make_pairs": "tripletsk.evaluation.pairs",
    "choose_threshold": "tripletsk.evaluation.pairs",
    "pair_distances": "tripletsk.evaluation.pairs",
    "pair_verification_report": "tripletsk.evaluation.pairs",
    "TripletGroupKFold": "tripletsk.evaluation.model_selection",
    "TripletImageKFold": "tripletsk.evaluation.model_selection",
    "triplet_groups": "tripletsk.evaluation.model_selection",
    "triplet_train_test_split": "tripletsk.evaluation.model_selection",
    "Neighbors": "tripletsk.evaluation.search",
    "NeighborIndex": "tripletsk.evaluation.search",
    "build_index": "tripletsk.evaluation.search",
    "search": "tripletsk.evaluation.search",
    "Calibration": "tripletsk.evaluation.matching",
    "calibrate": "tripletsk.evaluation.matching",
    "calibrate_index": "tripletsk.evaluation.matching",
    "plot_loss_curves": "tripletsk.evaluation.plotting",
    "plot_distance_histograms": "tripletsk.evaluation.plotting",
    "plot_neighbour_sheet": "tripletsk.evaluation.plotting",
    "plot_precision_recall": "tripletsk.evaluation.plotting",
}

__all__ = [*_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)
