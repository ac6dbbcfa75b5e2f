"""Linear heads on caches larger than memory (``featx fit --memory-budget``).

When a cache's train split does not fit in the memory budget (default: :data:`DEFAULT_BUDGET_SHARE` of this machine's
RAM), ``logreg`` and ``svm`` are fitted without ever holding the split: the standardisation's mean and variance in
one pass (scikit-learn's ``StandardScaler.partial_fit``), then the same L-BFGS on the same objective as the
full-batch solver, each objective evaluation one pass over the split read block by block in the order of storage
(:meth:`featx.heads.solvers.LBFGSLinearClassifier.fit_blocks`). The solution is the full-batch one (to float32
summation order); memory holds one block of :data:`BLOCK_BYTES`, whatever the number of rows; time is one read of
the split per L-BFGS evaluation. Val and test are scored block by block too.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..errors import FeatxError, FeatxUsageError

__all__ = ["BLOCK_BYTES", "DEFAULT_BUDGET_SHARE", "STREAMING_HEADS", "machine_memory", "parse_size", "budget",
           "train_bytes", "fit_streaming", "scores_blocks"]

#: The default memory budget: this share of the machine's RAM for the train split.
DEFAULT_BUDGET_SHARE = 0.5
#: Bytes of features read per block while streaming.
BLOCK_BYTES = 64 << 20
#: Heads that can be fitted streaming (standardised features, then L-BFGS on a linear model).
STREAMING_HEADS = ("logreg", "svm")
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30,
          "T": 1 << 40, "TB": 1 << 40}


def machine_memory() -> int:
    """This machine's RAM in bytes."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def parse_size(text: str) -> int:
    """``"2GB"``, ``"512M"``, ``"1.5 GiB"``, ``"100000"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B?)\s*", str(text).upper())
    if not m:
        raise FeatxUsageError(f"--memory-budget {text!r} is not a size such as 2GB or 512MB", param="memory_budget")
    value = float(m[1]) * _UNITS[m[2] + ("B" if m[2] and m[3] else "")]
    if value <= 0:
        raise FeatxUsageError(f"--memory-budget {text!r}: give a positive size", param="memory_budget")
    return int(value)


def budget(text: str | None) -> int:
    """The memory budget in bytes: ``text`` parsed, or :data:`DEFAULT_BUDGET_SHARE` of the machine's RAM."""
    return parse_size(text) if text else int(DEFAULT_BUDGET_SHARE * machine_memory())


def train_bytes(view) -> int:
    """Bytes the split's features take in memory (float32)."""
    return len(view) * _dim(view) * 4


def _dim(view) -> int:
    return int(view.rows(0, 1).shape[1]) if len(view) else 0


def _block_rows(view) -> int:
    return max(1, BLOCK_BYTES // max(1, _dim(view) * 4))


def _labelled_blocks(view, y_all: np.ndarray, transform=None):
    """``(X, y)`` of the labelled rows of ``view`` (whose labels are ``y_all``, read once by the caller), block by
    block in storage order (``transform`` applied to X)."""
    n, step = len(view), _block_rows(view)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        keep = y_all[lo:hi] >= 0
        if keep.any():
            X = view.rows(lo, hi)[keep]
            yield (transform(X) if transform is not None else X), y_all[lo:hi][keep]


def fit_streaming(head_name: str, head, view):
    """Fit ``head`` (a ``logreg``/``svm`` pipeline: StandardScaler then L-BFGS) on split ``view`` without loading it:
    returns the fitted head and a record (passes over the data, block size)."""
    from sklearn.preprocessing import StandardScaler

    from .solvers import LBFGSLinearClassifier

    steps = dict(head.named_steps) if hasattr(head, "named_steps") else {}
    scaler, clf = steps.get("scale"), steps.get("clf")
    if head_name not in STREAMING_HEADS or not isinstance(scaler, StandardScaler) or \
            not isinstance(clf, LBFGSLinearClassifier) or len(steps) != 2:
        raise FeatxError(f"the train split does not fit the memory budget and {head_name} cannot be fitted streaming "
                         f"({', '.join(STREAMING_HEADS)} can); raise --memory-budget or use one of those")
    y = view.y
    labels = y[y >= 0]
    if len(np.unique(labels)) < 2:
        raise FeatxError("the train split needs at least two labelled classes to fit a head")
    for X, _ in _labelled_blocks(view, y):
        scaler.partial_fit(X)
    clf.fit_blocks(lambda: _labelled_blocks(view, y, scaler.transform), labels, _dim(view))
    return head, {"passes": int(clf.passes_), "block_rows": _block_rows(view), "rows": int(len(labels))}


def scores_blocks(head, view) -> tuple[np.ndarray, np.ndarray]:
    """The head's class scores (probabilities where it has them) of the labelled rows of ``view``, block by
    block, and their labels."""
    out, ys = [], []
    for X, y in _labelled_blocks(view, view.y):
        out.append(head.predict_proba(X) if hasattr(head, "predict_proba") else head.decision_function(X))
        ys.append(y)
    return (np.concatenate(out), np.concatenate(ys)) if out else (np.zeros((0, 0)), np.zeros(0, np.int64))
