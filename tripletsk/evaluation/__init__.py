"""Judging a model: metrics, leakage-safe splits, search, calibrated matching and plots.

``metrics`` (triplet accuracy, P@1, recall@k, MAP@R), ``pairs`` (pair verification at a
threshold), ``triplet_graph`` (groups of triplets linked by shared images), ``model_selection``
(splits that keep an image on one side), ``search`` (nearest neighbours of queries in memory),
``matching`` (a distance threshold at a chosen precision), ``plotting`` (loss curves, distance
histograms, neighbour sheets; matplotlib).
"""

from tripletsk._lazy import lazy_getattr, public_names

_LAZY = public_names(
    {
        "tripletsk.evaluation.metrics": [
            "triplet_accuracy",
            "label_triplet_accuracy",
            "precision_at_1",
            "recall_at_k",
            "r_precision",
            "map_at_r",
            "retrieval_report",
            "make_recall_at_k_scorer",
            "SCORERS",
        ],
        "tripletsk.evaluation.pairs": [
            "make_pairs",
            "choose_threshold",
            "pair_distances",
            "pair_verification_report",
        ],
        "tripletsk.evaluation.model_selection": [
            "TripletGroupKFold",
            "TripletImageKFold",
            "triplet_train_test_split",
        ],
        "tripletsk.evaluation.triplet_graph": ["triplet_groups"],
        "tripletsk.evaluation.search": ["Neighbors", "NeighborIndex", "build_index", "search"],
        "tripletsk.evaluation.matching": ["Calibration", "calibrate", "calibrate_index"],
        "tripletsk.evaluation.plotting": [
            "plot_loss_curves",
            "plot_distance_histograms",
            "plot_neighbour_sheet",
            "plot_precision_recall",
        ],
    }
)

__all__ = [*_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)
