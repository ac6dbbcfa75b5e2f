"""Heads: a name -> a scikit-learn estimator (a Pipeline with its feature scaling).

Every head is a :class:`sklearn.pipeline.Pipeline` whose last step is called ``clf``.
Parameters given without a step prefix (``C=0.1``) go to ``clf``; other steps are
addressed as sklearn does (``kmap__gamma=0.001``).

Why these estimators (54,000 x 1280 x 10 must fit in a minute or two on 2 cores):

- ``logreg``: multinomial logistic regression, L-BFGS on standardised features.
- ``svm``: linear SVM, ``LinearSVC`` solved in the primal (``dual=False``), which is the
  right solver when samples outnumber features; the dual solver does not finish on such shapes.
- ``rbf-svm``: an RBF-kernel SVM. Exact ``SVC`` is O(n^2) memory and O(n^2..n^3) time
  (hours on 54k samples), so the kernel is approximated with a Nystroem map of
  ``n_components`` landmarks followed by a linear SVM (Williams & Seeger 2001), which
  gives kernel-SVM accuracy at linear-SVM cost.
- ``knn``: k-nearest neighbours by cosine similarity (L2-normalised features, brute force),
  distance-weighted votes, as in the k-NN evaluations of self-supervised features.
- ``torch-linear``: the classic "new fc layer" trained with AdamW, see
  :class:`featx.torch_head.TorchLinearClassifier`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable

from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC

from .errors import FeatxError
from .torch_head import TorchLinearClassifier

__all__ = ["HEADS", "HeadSpec", "make_head", "parse_params", "head_params"]


@dataclass(frozen=True)
class HeadSpec:
    """A named head: how to build it, its defaults and a one-line description."""

    name: str
    build: Callable[[], Pipeline]
    description: str
    #: the parameters worth tuning, shown by ``featx heads``
    key_params: tuple[str, ...] = ()


def _logreg() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=0.1, max_iter=300))])


def _svm() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", LinearSVC(C=0.01, dual=False))])


def _rbf_svm() -> Pipeline:
    return Pipeline([
        ("scale", StandardScaler()),
        ("kmap", Nystroem(kernel="rbf", gamma=None, n_components=2048, random_state=0)),
        ("clf", LinearSVC(C=0.1, dual=False)),
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
        HeadSpec("svm", _svm, "linear SVM (LinearSVC, primal solver), standardised features",
                 ("C", "class_weight")),
        HeadSpec("rbf-svm", _rbf_svm, "RBF-kernel SVM via a 2048-landmark Nystroem map + linear SVM",
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


def make_head(name: str, params: dict | None = None) -> Pipeline:
    """A fresh, unfitted head with ``params`` applied (validated against the estimator)."""
    if name not in HEADS:
        raise FeatxError(f"unknown head {name!r} (choose from {', '.join(HEADS)})")
    head = HEADS[name].build()
    if params:
        valid = head.get_params(deep=True)
        full = {}
        for key, value in params.items():
            target = key if "__" in key else f"clf__{key}"
            if target not in valid or target.count("__") != 1:
                options = sorted(k.removeprefix("clf__") for k in valid if k.count("__") == 1)
                raise FeatxError(f"head {name} has no parameter {key!r} (it has: {', '.join(options)})")
            full[target] = value
        head.set_params(**full)
        _validate(name, head)
    return head


def _validate(name: str, head: Pipeline) -> None:
    """Check types and ranges now, before any data is loaded (sklearn would at ``fit``)."""
    from sklearn.utils._param_validation import InvalidParameterError

    for _, step in head.steps:
        check = getattr(step, "_validate_params", None)  # sklearn's own constraint check
        if check is None:
            continue
        try:
            check()
        except InvalidParameterError as exc:
            raise FeatxError(f"head {name}: {exc}") from None


def head_params(head: Pipeline) -> dict:
    """The tunable parameters of a head, step-prefixed (``clf__`` dropped), JSON-able."""
    out = {}
    for key, value in head.get_params(deep=True).items():
        if key.count("__") != 1:
            continue
        if isinstance(value, (int, float, str, bool, type(None))):
            out[key.removeprefix("clf__")] = value
    return out
