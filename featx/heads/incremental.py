"""Heads that learn from a stream: new rows and new classes are folded in without revisiting old rows.

- :class:`StreamingLDA`: linear discriminant analysis with one covariance shared by all classes, kept as running
  sufficient statistics (per-class counts and means, the pooled within-class scatter), updated a batch at a time by
  the exact pairwise formula (Chan, Golub & LeVeque 1979), so that a head updated class group by class group equals
  the head fitted on the same rows at once, to float precision. This is Deep Streaming LDA (Hayes & Kanan, CVPR-W
  2020, "Lifelong Machine Learning with Deep Streaming Linear Discriminant Analysis") with the exact pooled
  covariance in place of its running approximation. Prediction: ``argmax_c x' L mu_c - mu_c' L mu_c / 2`` with
  ``L`` the inverse of the covariance shrunk towards its mean variance (``shrinkage``), classes equally likely.
- :class:`NearestClassMean`: the nearest class mean (on L2-normalised features in the ``ncm`` head), the simplest
  class-incremental learner (Mensink et al. 2013).

Both keep ``coef_`` / ``intercept_`` (one row per class), like the linear heads, so prediction, calibration and
``featx export-model`` treat them as linear heads. Neither scikit-learn (``LinearDiscriminantAnalysis`` and
``NearestCentroid`` have no ``partial_fit``) nor a maintained small library provides them (Avalanche's
``StreamingLDA`` comes with a whole continual-learning framework): featx keeps its own, about a hundred lines.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ..util import softmax

__all__ = ["StreamingLDA", "NearestClassMean", "as_classifier_sees", "partial_fit_head"]


def as_classifier_sees(head, X):
    """``X`` through the steps of a streaming head's pipeline before its classifier (stateless: a normaliser, the
    chosen layers' columns; ``HeadSpec.incremental``)."""
    for _, step in head.steps[:-1]:
        X = step.transform(X)
    return X


def partial_fit_head(head, X, y):
    """Fold the rows ``X, y`` into a streaming head (a pipeline ending in :class:`StreamingLDA` or
    :class:`NearestClassMean`); new labels add classes. Returns the head."""
    head.steps[-1][1].partial_fit(as_classifier_sees(head, X), y)
    return head


class _ClassMeans(ClassifierMixin, BaseEstimator):
    """Per-class counts and means, updated a batch at a time; subclasses add their statistics in ``_absorb``
    and turn them into ``coef_`` / ``intercept_`` in ``_solve``."""

    def check_params(self) -> None:
        """Raise ``ValueError`` for a parameter value that is not allowed (featx checks before any data is read)."""

    def fit(self, X, y):
        """Forget everything seen, then learn ``X, y`` in one batch."""
        for name in ("classes_", "counts_", "means_", "scatter_", "sq_dev_", "n_features_in_"):
            self.__dict__.pop(name, None)
        return self.partial_fit(X, y)

    def partial_fit(self, X, y, classes=None):
        """Fold the rows ``X`` (labels ``y``, integers) into the statistics; a label not seen before adds a class.
        ``classes`` is accepted for scikit-learn's convention and may name classes before any of their rows come."""
        self.check_params()
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be 2-D with one row per label, got {X.shape} and {len(y)} labels")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError("labels must be integers (class indices)")
        if not hasattr(self, "classes_"):
            self.n_features_in_ = X.shape[1]
            self.classes_ = np.zeros(0, dtype=np.int64)
            self.counts_ = np.zeros(0)
            self.means_ = np.zeros((0, X.shape[1]))
            self._start(X.shape[1])
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the head was trained on {self.n_features_in_}")
        new = np.setdiff1d(np.union1d(np.unique(y), [] if classes is None else np.asarray(classes)), self.classes_)
        if len(new):  # new classes: rows of zeros, kept in sorted order
            merged = np.union1d(self.classes_, new).astype(np.int64)
            at = np.searchsorted(merged, self.classes_)
            counts, means = np.zeros(len(merged)), np.zeros((len(merged), X.shape[1]))
            counts[at], means[at] = self.counts_, self.means_
            self.classes_, self.counts_, self.means_ = merged, counts, means
        for c in np.unique(y):
            i = int(np.searchsorted(self.classes_, c))
            rows = X[y == c]
            n_b, mean_b = len(rows), rows.mean(axis=0)
            n_a, mean_a = self.counts_[i], self.means_[i]
            delta = mean_b - mean_a
            self._absorb(rows, mean_b, delta, n_a, n_b)
            self.counts_[i] = n_a + n_b
            self.means_[i] = mean_a + delta * (n_b / (n_a + n_b))
        self._solve()
        return self

    def _start(self, d: int) -> None:
        raise NotImplementedError

    def _absorb(self, rows, mean_b, delta, n_a, n_b) -> None:
        raise NotImplementedError

    def _solve(self) -> None:
        raise NotImplementedError

    def _seen(self) -> np.ndarray:
        return self.counts_ > 0

    def decision_function(self, X):
        check_is_fitted(self, "coef_")
        scores = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return np.where(self._seen(), scores, -np.inf)  # a class named but never seen is never predicted

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


class StreamingLDA(_ClassMeans):
    """Streaming linear discriminant analysis (see the module doc).

    Args:
        shrinkage: how far the shared covariance is pulled towards ``v I`` (``v`` its mean variance) before it is
            inverted, in (0, 1]: ``(1 - shrinkage) S + shrinkage v I``. Needed whenever there are fewer rows than
            features; tuned on val by ``featx fit`` (and applied anew after every update: it needs no old rows).
    """

    def __init__(self, shrinkage: float = 1e-2):
        self.shrinkage = shrinkage

    def check_params(self) -> None:
        s = self.shrinkage
        if not (isinstance(s, Real) and not isinstance(s, bool) and 0 < s <= 1):
            raise ValueError(f"The 'shrinkage' parameter of StreamingLDA must be a float in the range (0, 1]. "
                             f"Got {s!r} instead.")

    def _start(self, d: int) -> None:
        self.scatter_ = np.zeros((d, d))  # the pooled within-class scatter: sum over rows of (x - mu_y)(x - mu_y)'

    def _absorb(self, rows, mean_b, delta, n_a, n_b) -> None:
        centred = rows - mean_b
        self.scatter_ += centred.T @ centred + np.outer(delta, delta) * (n_a * n_b / (n_a + n_b))

    def _solve(self) -> None:
        n = self.counts_.sum()
        d = self.n_features_in_
        cov = self.scatter_ / max(n, 1.0)
        v = np.trace(cov) / d if np.trace(cov) > 0 else 1.0
        shrunk = (1 - self.shrinkage) * cov + self.shrinkage * v * np.eye(d)
        means = self.means_
        self.coef_ = np.linalg.solve(shrunk, means.T).T  # (classes, d): L mu_c, L symmetric
        self.intercept_ = -0.5 * np.einsum("cd,cd->c", self.coef_, means)

    def predict_proba(self, X):
        """The classes' posterior under the model (Gaussian classes, one covariance, equal priors)."""
        return softmax(self.decision_function(X))

    def set_shrinkage(self, shrinkage: float) -> "StreamingLDA":
        """Another shrinkage for the statistics already seen (the rows are not needed): ``coef_`` solved again."""
        self.shrinkage = shrinkage
        self.check_params()
        self._solve()
        return self

    def tune_shrinkage(self, X, y, values) -> float:
        """The shrinkage among ``values`` with the best accuracy on ``(X, y)`` (the first of equals), set; returned."""
        scores = [float(np.mean(self.set_shrinkage(v).predict(X) == y)) for v in values]
        self.set_shrinkage(values[int(np.argmax(scores))])
        return self.shrinkage


class NearestClassMean(_ClassMeans):
    """Nearest class mean by Euclidean distance; no parameters. Its scores are the log-likelihoods of Gaussian classes
    with one variance ``s2`` for every feature (pooled within the classes, kept as a running sum):
    ``(x' mu_c - |mu_c|^2 / 2) / s2``, so that their softmax is the posterior under that model."""

    def _start(self, d: int) -> None:
        self.sq_dev_ = 0.0  # the sum over rows of |x - mu_y|^2

    def _absorb(self, rows, mean_b, delta, n_a, n_b) -> None:
        self.sq_dev_ += float(((rows - mean_b) ** 2).sum() + delta @ delta * (n_a * n_b / (n_a + n_b)))

    def _solve(self) -> None:
        n = self.counts_.sum()
        s2 = self.sq_dev_ / (n * self.n_features_in_) if self.sq_dev_ > 0 else 1.0
        self.coef_ = self.means_ / s2
        self.intercept_ = -0.5 * np.einsum("cd,cd->c", self.means_, self.means_) / s2

    def predict_proba(self, X):
        """The classes' posterior under the model (Gaussian classes, one variance for every feature, equal priors)."""
        return softmax(self.decision_function(X))
