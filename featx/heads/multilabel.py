"""Multi-label heads: several labels per image (a manifest's ``labels`` column).

- ``logreg`` / ``svm``: one binary problem per label, scikit-learn's :class:`~sklearn.multiclass.OneVsRestClassifier`
  around featx's own L-BFGS solver (the same objective and ``C`` as the single-label heads); scores are each label's
  decision value (a logit for logreg, a margin for svm).
- ``knn``: scikit-learn's k-NN votes each label among the neighbours (its multi-output mode); scores are each
  label's share of the (distance-weighted) votes.

An image gets every label whose score reaches that label's threshold, chosen on val (:mod:`featx.probe.multilabel`)
and kept in the head's card.
"""

from __future__ import annotations

import numpy as np

from ..errors import FeatxUsageError
from .registry import check_head, make_head

__all__ = ["MULTILABEL_HEADS", "make_multilabel_head", "label_scores", "score_kind"]

#: The heads that take a label matrix.
MULTILABEL_HEADS = ("logreg", "svm", "knn")


def make_multilabel_head(name: str, params: dict | None = None):
    """A fresh multi-label head: the single-label head's pipeline, its ``clf`` one-vs-rest for the linear heads."""
    check_head(name)
    if name not in MULTILABEL_HEADS:
        raise FeatxUsageError(f"head {name} takes one label per image; for a multi-label cache use "
                              f"{', '.join(MULTILABEL_HEADS)}")
    head = make_head(name, params)
    if name != "knn":
        from sklearn.multiclass import OneVsRestClassifier

        head.steps[-1] = ("clf", OneVsRestClassifier(head.steps[-1][1]))  # its parameters set and checked above
    return head


def score_kind(head) -> str:
    """``"decision"`` (thresholds in decision units, 0 the neutral point) or ``"vote share"`` (in [0, 1], 0.5)."""
    return "decision" if hasattr(head, "decision_function") else "vote share"


def label_scores(head, X) -> np.ndarray:
    """``(N, labels)`` scores of a fitted multi-label head: higher means more likely to carry the label."""
    if hasattr(head, "decision_function"):
        s = np.asarray(head.decision_function(X), dtype=np.float64)
        return s.reshape(len(X), -1)
    parts = head.predict_proba(X)  # k-NN, multi-output: one (N, classes of that label) array per label
    clf = head[-1] if hasattr(head, "steps") else head
    out = np.zeros((len(X), len(parts)))
    for j, (proba, classes) in enumerate(zip(parts, clf.classes_)):
        if 1 in classes:
            out[:, j] = proba[:, list(classes).index(1)]
    return out
