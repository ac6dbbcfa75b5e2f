"""Heads: a name -> a scikit-learn estimator (a Pipeline with its feature scaling).

Every head is a :class:`sklearn.pipeline.Pipeline` whose last step is called ``clf``.
Parameters given without a step prefix (``C=0.1``) go to ``clf``; other steps are
addressed as sklearn does (``kmap__gamma=0.001``).

Why these estimators (the full default cache, 54,000 x 1280 x 10, must fit in a minute or two on
2 cores; times measured there, see the README):

- ``logreg``: multinomial logistic regression, L-BFGS on standardised features.
- ``svm``: linear SVM, ``LinearSVC`` solved in the primal (``dual=False``, the right solver when
  samples outnumber features) with ``tol=1e-3``, its one-vs-rest problems run in parallel by
  ``OneVsRestClassifier(n_jobs=-1)`` (liblinear itself is single-threaded). The textbook
  ``LinearSVC()`` took 200 s here; this takes 90 s at the same validation accuracy (0.907).
- ``rbf-svm``: an RBF-kernel SVM. Exact ``SVC`` is O(n^2) memory and O(n^2..n^3) time
  (hours on 54k samples), so the kernel is approximated with a Nystroem map of
  ``n_components`` landmarks (Williams & Seeger 2001) followed by the linear SVM above, which
  gives kernel-SVM behaviour at linear-SVM cost.
- ``knn``: k-nearest neighbours by cosine similarity (L2-normalised features, brute force),
  distance-weighted votes, as in the k-NN evaluations of self-supervised features.
- ``torch-linear``: the classic "new fc layer" trained with AdamW, see
  :class:`featx.torch_head.TorchLinearClassifier`.

Default parameters were chosen on the default pipeline's validation split (never on test).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable

from sklearn.base import BaseEstimator
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC

from .errors import FeatxError
from .torch_head import TorchLinearClassifier

__all__ = ["HEADS", "HeadSpec", "make_head", "parse_params", "head_params", "param_names"]


@dataclass(frozen=True)
class HeadSpec:
    """A named head: how to build it, its defaults and a one-line description."""

    name: str
    build: Callable[[], Pipeline]
    description: str
    #: the parameters worth tuning, shown by ``featx heads``
    key_params: tuple[str, ...] = ()


def _logreg() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=0.01, max_iter=1000))])


def _linear_svc(C: float) -> OneVsRestClassifier:
    # liblinear is single-threaded: run the one-vs-rest problems in parallel on all cores.
    return OneVsRestClassifier(LinearSVC(C=C, dual=False, tol=1e-3), n_jobs=-1)


def _svm() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", _linear_svc(0.01))])


def _rbf_svm() -> Pipeline:
    return Pipeline([
        ("scale", StandardScaler()),
        ("kmap", Nystroem(kernel="rbf", gamma=None, n_components=2048, random_state=0)),
        ("clf", _linear_svc(10.0)),
    ])


def _knn() -> Pipeline:
    return Pipeline([
        ("norm", Normalizer()),
        ("clf", KNeighborsClassifier(n_neighbors=20, weights="distance", algorithm="brute")),
    ])


def _torch_linear() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", TorchLinearClassifier())])


HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in (
        HeadSpec("logreg", _logreg, "multinomial logistic regression (L-BFGS), standardised features",
                 ("C", "max_iter", "class_weight")),
        HeadSpec("svm", _svm, "linear SVM (LinearSVC, primal solver, one-vs-rest in parallel), standardised features",
                 ("C", "class_weight")),
        HeadSpec("rbf-svm", _rbf_svm, "RBF-kernel SVM: 2048-landmark Nystroem map + linear SVM",
                 ("C", "kmap__gamma", "kmap__n_components", "class_weight")),
        HeadSpec("knn", _knn, "k-nearest neighbours, cosine similarity, distance-weighted votes",
                 ("n_neighbors", "weights")),
        HeadSpec("torch-linear", _torch_linear, "linear layer trained with AdamW in torch (CPU or CUDA)",
                 ("lr", "weight_decay", "epochs", "batch_size", "device")),
    )
}


def parse_params(pairs) -> dict:
    """``["C=0.1", "kmap__gamma=1e-3", "class_weight=balanced"]`` -> a dict of Python values."""
    params = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise FeatxError(f"parameter {pair!r} is not NAME=VALUE")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()  # a bare word such as balanced or cosine
        params[name.strip()] = value
    return params


def param_names(head: Pipeline) -> dict[str, str]:
    """Short parameter names -> full sklearn names.

    Parameters of the ``clf`` step go by their own name (``C``, even when nested as
    ``clf__estimator__C``; the shallowest wins a clash); other steps keep their prefix
    (``kmap__gamma``).
    """
    names: dict[str, str] = {}
    for full, value in head.get_params(deep=True).items():
        if "__" not in full or isinstance(value, BaseEstimator):
            continue
        step, _, rest = full.partition("__")
        leaf = rest.rsplit("__", 1)[-1]
        short = leaf if step == "clf" else f"{step}__{leaf}"
        if short not in names or full.count("__") < names[short].count("__"):
            names[short] = full
    return names


def make_head(name: str, params: dict | None = None) -> Pipeline:
    """A fresh, unfitted head with ``params`` applied and validated before any data is seen.

    Args:
        name: a key of :data:`HEADS`.
        params: short names (``C``, ``kmap__gamma``) or full sklearn names to values.
    """
    if name not in HEADS:
        raise FeatxError(f"unknown head {name!r} (choose from {', '.join(HEADS)})")
    head = HEADS[name].build()
    if params:
        names = param_names(head)
        full_names = set(names.values())
        full = {}
        for key, value in params.items():
            target = names.get(key, key)
            if target not in full_names:
                raise FeatxError(f"head {name} has no parameter {key!r} (it has: {', '.join(sorted(names))})")
            full[target] = value
        head.set_params(**full)
        _validate(name, head)
    return head


def _validate(name: str, head) -> None:
    """Check types and ranges now, before any data is loaded (sklearn would at ``fit``)."""
    from sklearn.utils._param_validation import InvalidParameterError

    estimators = [head, *(v for v in head.get_params(deep=True).values() if isinstance(v, BaseEstimator))]
    for est in estimators:
        check = getattr(est, "_validate_params", None)  # sklearn's own constraint check
        if check is None or not hasattr(est, "_parameter_constraints"):
            continue
        try:
            check()
        except InvalidParameterError as exc:
            raise FeatxError(f"head {name}: {exc}") from None


def head_params(head: Pipeline) -> dict:
    """The parameters of a head by their short names, JSON-able values only."""
    values = head.get_params(deep=True)
    return {
        short: values[full]
        for short, full in sorted(param_names(head).items())
        if isinstance(values[full], (int, float, str, bool, type(None)))
    }
