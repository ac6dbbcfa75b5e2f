"""Heads: a name -> a scikit-learn estimator (a Pipeline with its feature scaling).

Every head is a :class:`sklearn.pipeline.Pipeline` whose last step is called ``clf``.
Parameters given without a step prefix (``C=0.1``) go to ``clf``; other steps are
addressed as sklearn does (``kmap__gamma=0.001``).

Why these estimators (heads must fit in seconds on 2 CPU cores: ``make bench`` measures them
against scikit-learn's textbook estimators on the default cache and on a 12,000 x 2048 x 120
cache, see ``docs/benchmarks.md``):

- ``logreg``: multinomial logistic regression on standardised features, fitted by full-batch
  L-BFGS in torch (:class:`featx.heads.solvers.LBFGSLinearClassifier`, scikit-learn's objective and
  ``C``). ``LogisticRegression(solver="lbfgs")`` reaches the same accuracy 1.3-2.6x slower in
  ``make bench`` (35 s vs 19 s on the full default cache).
- ``svm``: linear SVM (squared hinge, one-vs-rest, ``LinearSVC``'s default loss and ``C``), all
  classes solved at once by the same L-BFGS. liblinear solves one class at a time on one core:
  ``LinearSVC()`` took 200 s on the default cache and did not finish in minutes on 120 classes.
- ``rbf-svm``: an RBF-kernel SVM. Exact ``SVC`` is O(n^2) memory and O(n^2..n^3) time
  (hours on 54k samples), so the kernel is approximated with a Nystroem map of
  ``n_components`` landmarks (Williams & Seeger 2001), standardised, followed by the linear SVM
  above, which gives kernel-SVM behaviour at linear-SVM cost.
- ``knn``: k-nearest neighbours by cosine similarity (L2-normalised features, brute force),
  distance-weighted votes, as in the k-NN evaluations of self-supervised features.
- ``torch-linear``: the classic "new fc layer" trained with AdamW, see
  :class:`featx.heads.solvers.TorchLinearClassifier`.

Default parameters were chosen on the default pipeline's validation split (never on test).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable

from ..errors import FeatxUsageError
from ..util import did_you_mean, first_line

# scikit-learn and torch are imported inside the builders: naming and checking heads stays instant.

__all__ = ["HEADS", "HeadSpec", "ROW_BOUND_PARAMS", "check_head", "make_head", "parse_params", "head_params",
           "param_names", "bound_to_rows", "clip_to_rows"]


@dataclass(frozen=True)
class HeadSpec:
    """A named head: how to build it, its defaults and a one-line description."""

    name: str
    build: Callable[[], "Pipeline"]  # noqa: F821 - sklearn.pipeline.Pipeline
    description: str
    #: the parameters worth tuning, shown by ``featx heads``
    key_params: tuple[str, ...] = ()


def _logreg():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .solvers import LBFGSLinearClassifier

    # tol 1e-6: its probabilities then match scikit-learn's converged LogisticRegression (tol=1e-6) within
    # 0.001 over C = 1e-4 .. 10 on MNIST-5k MobileNetV2 features (0.005 at C = 10 on 100 Fashion-MNIST rows);
    # the solver's default 1e-3 stopped early (0.03 off at C = 10 there, 0.17-0.20 seen elsewhere). Cost:
    # 12,000 x 2048 x 120 at C = 0.01 in 3.7 s (4.2 s before, same run; within the 5 s budget).
    return Pipeline([("scale", StandardScaler()),
                     ("clf", LBFGSLinearClassifier(loss="log_loss", C=0.01, tol=1e-6, max_iter=1000))])


def _svm():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .solvers import LBFGSLinearClassifier

    return Pipeline([("scale", StandardScaler()), ("clf", LBFGSLinearClassifier(loss="squared_hinge", C=0.001))])


def _rbf_svm():
    from sklearn.kernel_approximation import Nystroem
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .solvers import LBFGSLinearClassifier

    return Pipeline([
        ("scale", StandardScaler()),
        ("kmap", Nystroem(kernel="rbf", gamma=None, n_components=NYSTROEM_COMPONENTS, random_state=0)),
        ("kscale", StandardScaler()),  # Nystroem features are tiny (std ~0.01): rescale for the solver
        ("clf", LBFGSLinearClassifier(loss="squared_hinge", C=0.01)),
    ])


#: Nystroem landmarks of the rbf-svm head: 1024 fits 12,000 x 2048 x 120 in ~3.5 s on 2 cores and the
#: default cache in ~20 s (val top-1 0.905); 2048 reaches 0.914 there in ~50 s (``kmap__n_components=2048``).
NYSTROEM_COMPONENTS = 1024


def _knn():
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    return Pipeline([
        ("norm", Normalizer()),
        ("clf", KNeighborsClassifier(n_neighbors=20, weights="distance", algorithm="brute")),
    ])


def _torch_linear():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .solvers import TorchLinearClassifier

    return Pipeline([("scale", StandardScaler()), ("clf", TorchLinearClassifier())])


HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in (
        HeadSpec("logreg", _logreg, "multinomial logistic regression, full-batch L-BFGS in torch, standardised features",
                 ("C", "max_iter", "tol", "class_weight", "device")),
        HeadSpec("svm", _svm, "linear SVM (squared hinge, one-vs-rest), full-batch L-BFGS in torch, standardised features",
                 ("C", "max_iter", "tol", "class_weight", "device")),
        HeadSpec("rbf-svm", _rbf_svm, "RBF-kernel SVM: Nystroem map (1024 landmarks) + the linear SVM",
                 ("C", "kmap__gamma", "kmap__n_components", "class_weight")),
        HeadSpec("knn", _knn, "k-nearest neighbours, cosine similarity, distance-weighted votes",
                 ("n_neighbors", "weights")),
        HeadSpec("torch-linear", _torch_linear, "linear layer trained with AdamW in torch (CPU or CUDA)",
                 ("lr", "weight_decay", "epochs", "batch_size", "device")),
    )
}


def check_head(name: str, where: str | None = None) -> str:
    """``name`` if it is a registered head, else a usage error listing them (the one place this is checked)."""
    if name not in HEADS:
        prefix = f"{where}: " if where else ""
        raise FeatxUsageError(f"{prefix}unknown head {name!r}; {did_you_mean(name, HEADS)}choose from {', '.join(HEADS)}")
    return name


def parse_params(pairs) -> dict:
    """``["C=0.1", "kmap__gamma=1e-3", "class_weight=balanced"]`` -> a dict of Python values."""
    params = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise FeatxUsageError(f"parameter {pair!r} is not NAME=VALUE")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()  # a bare word such as balanced or cosine
        params[name.strip()] = value
    return params


def param_names(head) -> dict[str, str]:
    """Short parameter names -> full sklearn names.

    Parameters of the ``clf`` step go by their own name (``C``, even when nested as
    ``clf__estimator__C``; the shallowest wins a clash); other steps keep their prefix
    (``kmap__gamma``).
    """
    from sklearn.base import BaseEstimator

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


def make_head(name: str, params: dict | None = None):
    """A fresh, unfitted head with ``params`` applied and validated before any data is seen.

    Args:
        name: a key of :data:`HEADS`.
        params: short names (``C``, ``kmap__gamma``) or full sklearn names to values.
    """
    check_head(name)
    head = HEADS[name].build()
    if params:
        names = param_names(head)
        full_names = set(names.values())
        full = {}
        for key, value in params.items():
            target = names.get(key, key)
            if target not in full_names:
                raise FeatxUsageError(f"head {name} has no parameter {key!r}; {did_you_mean(key, names)}"
                                      f"it has: {', '.join(sorted(names))}")
            full[target] = value
        head.set_params(**full)
        _validate(name, head)
    return head


def _validate(name: str, head) -> None:
    """Check types and ranges now, before any data is loaded (scikit-learn would at ``fit``)."""
    from sklearn.base import BaseEstimator

    estimators = [head, *(v for v in head.get_params(deep=True).values() if isinstance(v, BaseEstimator))]
    for est in estimators:
        try:
            if hasattr(est, "check_params"):  # featx's own solvers
                est.check_params()
            else:
                sklearn_check_params(est)
        except (ValueError, TypeError) as exc:  # scikit-learn's InvalidParameterError is both
            raise FeatxUsageError(f"head {name}: {first_line(exc)}") from None


def sklearn_check_params(est) -> None:
    """Run a scikit-learn estimator's own parameter constraints without data.

    scikit-learn has no public call for this: its estimators check ``_parameter_constraints`` at
    the start of ``fit`` through the private ``_validate_params``. This is featx's one use of it;
    ``tests/test_layout.py`` fails loudly if scikit-learn renames it (featx would otherwise find
    bad parameters only at ``fit``, after loading the cache).
    """
    check = getattr(est, "_validate_params", None)
    if check is not None and hasattr(est, "_parameter_constraints"):
        check()


def head_params(head) -> dict:
    """The parameters of a head by their short names, JSON-able values only."""
    values = head.get_params(deep=True)
    return {
        short: values[full]
        for short, full in sorted(param_names(head).items())
        if isinstance(values[full], (int, float, str, bool, type(None)))
    }


#: Parameters that cannot exceed the number of training rows (short name, as in grids and cards).
ROW_BOUND_PARAMS = {"knn": "n_neighbors", "rbf-svm": "kmap__n_components"}


def clip_to_rows(head_name: str, params: dict, n_rows: int) -> tuple[dict, str | None]:
    """``params`` with a row-bound parameter (k-NN's k, the Nystroem landmarks) lowered to ``n_rows`` when it
    is larger (its default value included), and a note saying so; ``None`` when nothing changed."""
    key = ROW_BOUND_PARAMS.get(head_name)
    if key is None or n_rows < 1:
        return params, None
    value = params.get(key)
    if value is None:
        head = HEADS[head_name].build()
        value = head.get_params(deep=True)[param_names(head)[key]]
    if value is None or value <= n_rows:
        return params, None
    return {**params, key: n_rows}, (f"{head_name}: {key}={value} needs at least {value} training rows and there "
                                     f"are {n_rows}: using {key}={n_rows}")


def bound_to_rows(head_name: str, head, n_rows: int) -> str | None:
    """Lower ``head``'s row-bound parameter in place when it exceeds ``n_rows`` (see :func:`clip_to_rows`);
    returns the note, or ``None``. The card then records the value used."""
    key = ROW_BOUND_PARAMS.get(head_name)
    if key is None:
        return None
    full = param_names(head)[key]
    params, note = clip_to_rows(head_name, {key: head.get_params(deep=True)[full]}, n_rows)
    if note:
        head.set_params(**{full: params[key]})
    return note
