"""Temperature scaling (Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017).

A head's class scores ``z`` become probabilities ``softmax(z / T)``, with the one parameter ``T > 0`` fitted on
the validation split by minimising the negative log-likelihood; the ranking of classes (so every accuracy) does
not change. For heads without probabilities (the SVMs) it turns decision scores into usable probabilities; for
logistic regression it corrects over- or under-confidence.
"""

from __future__ import annotations

import numpy as np

from ..util import softmax

__all__ = ["decision_scores", "fit_temperature", "temperature_for", "calibrate", "expected_calibration_error",
           "ECE_BINS"]

#: Equal-width confidence bins of the expected calibration error.
ECE_BINS = 15


def decision_scores(head, X) -> np.ndarray | None:
    """``(n, n_classes)`` class scores of a head that has a ``decision_function``; ``None`` for one that has
    not (k-NN). Two classes: the single score ``s`` becomes ``(-s/2, s/2)``, whose softmax is the sigmoid."""
    if not hasattr(head, "decision_function"):
        return None
    s = np.asarray(head.decision_function(X), dtype=np.float64)
    return np.stack([-s / 2, s / 2], axis=1) if s.ndim == 1 else s


def _nll(scores: np.ndarray, y_idx: np.ndarray, t: float) -> float:
    z = scores / t
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), y_idx]))


def fit_temperature(scores: np.ndarray, y_idx: np.ndarray) -> float:
    """The ``T`` in [1e-3, 1e3] minimising the mean NLL of ``softmax(scores / T)`` for class indices ``y_idx``."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda log_t: _nll(scores, y_idx, float(np.exp(log_t))), bounds=(np.log(1e-3), np.log(1e3)),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def temperature_for(head, X: np.ndarray, y: np.ndarray) -> tuple[float, int] | None:
    """The temperature of ``head``'s scores fitted on held-out rows ``(X, y)`` (labels of classes the head does
    not know are left out) and how many rows it used; ``None`` for a head without scores or no usable row."""
    if not hasattr(head, "decision_function"):
        return None
    known = np.isin(y, head.classes_)
    if not known.any():
        return None
    return fit_temperature(decision_scores(head, X[known]), np.searchsorted(head.classes_, y[known])), int(known.sum())


def calibrate(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(scores / T)``."""
    return softmax(scores / temperature)


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, classes: np.ndarray, bins: int = ECE_BINS):
    """ECE of top-1 confidence (equal-width bins) and the per-bin (confidence, accuracy, count) for plotting."""
    conf = proba.max(axis=1)
    correct = classes[proba.argmax(axis=1)] == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece, points = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
            points.append((float(conf[mask].mean()), float(correct[mask].mean()), int(mask.sum())))
    return float(ece), points
