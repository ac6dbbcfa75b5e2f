"""Temperature scaling (Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017).

A head's class scores ``z`` become probabilities ``softmax(z / T)``, with the one parameter ``T > 0`` fitted on
the validation split by minimising the negative log-likelihood; the ranking of classes (so every accuracy) does
not change. For heads without probabilities (the SVMs) it turns decision scores into usable probabilities; for
logistic regression it corrects over- or under-confidence.
"""

from __future__ import annotations

import numpy as np

from ..util import softmax

__all__ = ["decision_scores", "fit_temperature", "guarded_temperature", "calibrate",
           "expected_calibration_error", "ece_interval", "ECE_BINS", "MIN_VAL_ROWS", "MIN_VAL_ERRORS",
           "TEMPERATURE_BOUNDS"]

#: Equal-width confidence bins of the expected calibration error.
ECE_BINS = 15
#: The guards of :func:`guarded_temperature` (conventions, not tuned on any data: a temperature is one parameter
#: fitted by likelihood, which needs rows and, above all, errors; with none the likelihood only grows as T -> 0).
MIN_VAL_ROWS = 50
MIN_VAL_ERRORS = 5
TEMPERATURE_BOUNDS = (0.05, 20.0)


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


def guarded_temperature(head, X: np.ndarray, y: np.ndarray) -> dict | None:
    """Temperature scaling only where the validation rows can support it: ``{"temperature", "val_rows",
    "val_errors"}``, or ``{"skipped": why, "val_rows", "val_errors"}`` (then featx keeps the head's raw scores and
    says so) when there are fewer than :data:`MIN_VAL_ROWS` rows or :data:`MIN_VAL_ERRORS` errors, or the fitted T
    leaves :data:`TEMPERATURE_BOUNDS`; ``None`` for a head without scores or no usable row."""
    if not hasattr(head, "decision_function"):
        return None
    known = np.isin(y, head.classes_)
    if not known.any():
        return None
    n = int(known.sum())
    errors = int((head.predict(X[known]) != y[known]).sum())
    out = {"val_rows": n, "val_errors": errors}
    if n < MIN_VAL_ROWS:
        return {**out, "skipped": f"only {n} labelled val rows (a temperature is fitted on {MIN_VAL_ROWS} or more)"}
    if errors < MIN_VAL_ERRORS:
        return {**out, "skipped": f"the head gets {n - errors} of {n} val rows right ({errors} errors): too few errors "
                                  f"to fit a temperature (needs {MIN_VAL_ERRORS}; with none it would shrink toward 0 "
                                  "and print certainty)"}
    t = fit_temperature(decision_scores(head, X[known]), np.searchsorted(head.classes_, y[known]))
    lo, hi = TEMPERATURE_BOUNDS
    if not lo <= t <= hi:
        return {**out, "skipped": f"the fitted temperature {t:.3g} is outside [{lo:g}, {hi:g}], which featx trusts: "
                                  "the head's scores are on another scale than probabilities (or the val rows do not "
                                  "pin the temperature down)"}
    return {**out, "temperature": t}


def ece_interval(proba: np.ndarray, y: np.ndarray, classes: np.ndarray, *, resamples: int = 200,
                 seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the expected calibration error over the rows."""
    rng = np.random.default_rng(seed)
    n = len(y)
    values = [expected_calibration_error(proba[idx], y[idx], classes)[0]
              for idx in (rng.integers(0, n, n) for _ in range(resamples))]
    lo, hi = np.quantile(values, [0.025, 0.975])
    return float(lo), float(hi)


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
