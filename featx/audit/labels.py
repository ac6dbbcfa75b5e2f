"""Likely label errors: out-of-fold predicted probabilities of the ``logreg`` head (k-fold CV over the labelled
train + val rows), ranked by confident learning (Northcutt, Jiang & Chuang 2021) through cleanlab's
``find_label_issues`` (the ``audit`` extra); each with the suggested label. And outliers: the mean cosine distance
to the :data:`OUTLIER_K` nearest neighbours, flagged above the upper fence ``Q3 + 3 IQR`` of its distribution."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np

__all__ = ["OUTLIER_K", "label_issues", "outliers"]

log = logging.getLogger("featx")

#: Neighbours the outlier score averages over.
OUTLIER_K = 10


def label_issues(X: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0):
    """Row indices of likely label errors, most likely first, the out-of-fold predicted class of every row and its
    out-of-fold probability (the suggestion's confidence); ``None`` when cleanlab is not installed (a one-line note
    says how to get it)."""
    if importlib.util.find_spec("cleanlab") is None:
        log.info("note: label errors need cleanlab (pip install 'featx[audit]'); that part of the audit is skipped")
        return None, None, None
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from ..heads.registry import make_head

    counts = np.bincount(y)
    folds = int(min(folds, counts[counts > 0].min()))
    if folds < 2:
        log.info("note: a class has a single labelled item: no cross-validated label check")
        return None, None, None
    proba = cross_val_predict(make_head("logreg"), X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                              method="predict_proba")
    ranked = find_label_issues(y, proba, return_indices_ranked_by="self_confidence")
    return np.asarray(ranked, dtype=np.int64), proba.argmax(axis=1), proba.max(axis=1)


def outliers(sims: np.ndarray, k: int = OUTLIER_K) -> tuple[np.ndarray, np.ndarray, float]:
    """Outlier score (mean cosine distance to the ``k`` nearest neighbours) per row, the flagged rows (most
    isolated first) and the fence they are above."""
    score = 1.0 - sims[:, :k].mean(axis=1) if sims.shape[1] else np.zeros(len(sims))
    q1, q3 = np.percentile(score, [25, 75]) if len(score) else (0.0, 0.0)
    fence = float(q3 + 3 * (q3 - q1))
    flagged = np.flatnonzero(score > fence)
    return score, flagged[np.argsort(-score[flagged])], fence
