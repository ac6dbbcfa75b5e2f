"""Metrics of a fitted head on one split."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, top_k_accuracy_score

from ..options import METRICS

__all__ = ["METRICS", "scores", "evaluate", "metrics", "stratified_folds"]


def scores(head, X) -> np.ndarray:
    """Class scores for ranking: probabilities when the head has them, else decision values."""
    if hasattr(head, "predict_proba"):  # a Pipeline has it only when its last step does
        return head.predict_proba(X)
    return head.decision_function(X)


def evaluate(head, X, y) -> dict:
    """top-1, top-5, mean per-class accuracy and macro-F1 of ``head`` on labelled rows.

    Unlabelled rows (label -1) are ignored. top-5 is top-k with k = min(5, classes - 1)
    and equals top-1 in a two-class problem.
    """
    keep = y >= 0
    X, y = X[keep], y[keep]
    if not len(y):
        return {}
    s = scores(head, X)
    return metrics(head.classes_, s, y, pred=None if s.ndim == 2 else head.predict(X))


def metrics(classes, s: np.ndarray, y: np.ndarray, *, pred: np.ndarray | None = None) -> dict:
    """:func:`evaluate`'s metrics from class scores ``s`` of labelled rows (``pred``: the predictions where ``s`` is
    one score per row, a two-class decision function)."""
    if not len(y):
        return {}
    pred = classes[np.argmax(s, axis=1)] if pred is None else pred
    k = min(5, len(classes) - 1) if len(classes) > 2 else 1
    out = {
        "top1": float(np.mean(pred == y)),
        # two classes: top-5 is top-1 (scikit-learn's top_k refuses a two-column score when a split holds one class)
        "top5": float(top_k_accuracy_score(y, s, k=k, labels=classes)) if s.ndim == 2 and len(classes) > 2
        else float(np.mean(pred == y)),
        "mean_per_class": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro")),
        "n": int(len(y)),
    }
    return out


def stratified_folds(y, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled, seeded ``(train, test)`` row splits of labels ``y``: ``folds`` of them, or fewer when the
    smallest class has fewer rows (never under 2). The same ``y`` and seed give the same folds, so scores of several
    feature sets of the same items are paired."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    folds = max(2, min(folds, int(np.bincount(np.unique(y, return_inverse=True)[1]).min())))
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
