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
- ``zeroshot``: no training: the class names through a ``clip:`` backbone's text tower
  (:mod:`featx.heads.zeroshot`).
- ``slda`` / ``ncm``: streaming heads (:mod:`featx.heads.incremental`): streaming linear discriminant analysis and
  the nearest class mean, which ``featx fit --update`` extends with new rows and new classes without old rows.

Default parameters were chosen on the default pipeline's validation split (never on test).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..compat import sklearn_check_params
from ..errors import FeatxUsageError
from ..util import did_you_mean, first_line

# scikit-learn and torch are imported inside the builders: naming and checking heads stays instant.

__all__ = ["HEADS", "HeadSpec", "register_head", "trained_heads", "check_head", "make_head", "parse_params", "head_params",
           "param_names", "bound_to_rows", "clip_to_rows", "LOGREG_C_GRID", "LINEAR_SVM_C_GRID", "KNN_GRID",
           "TORCH_LINEAR_GRID", "rbf_svm_grid"]


#: Logistic regression C: 45 points log-spaced over 1e-6 .. 1e5 (DINOv2 ``C_POWER_RANGE``,
#: Kornblith et al. 2019: inverse weight decay over this range, chosen on validation).
LOGREG_C_GRID = tuple(float(c) for c in np.logspace(-6, 5, 45))
#: Linear SVM C: 9 points over 1e-5 .. 1e-1. On standardised CNN features the optimum sits low
#: (1e-3 .. 1e-2 on the default cache); weaker regularisation only overfits and takes more iterations.
LINEAR_SVM_C_GRID = tuple(float(c) for c in np.logspace(-5, -1, 9))
#: RBF SVM C values (with the kernel widths of :func:`rbf_svm_grid`).
RBF_SVM_C_GRID = (0.001, 0.01, 0.1)
#: RBF kernel widths relative to ``1 / n_features`` (scikit-learn's ``gamma=None``): as wide, 4x narrower, 4x wider.
#: On standardised features a squared distance grows with the dimension, so the width scales with it.
RBF_GAMMA_FACTORS = (0.25, 4.0)
#: k-NN as in DINOv2's evaluation: k in 10/20/100/200, distance-weighted or uniform votes.
KNN_GRID = {"n_neighbors": (10, 20, 100, 200), "weights": ("distance", "uniform")}
#: Torch linear head: AdamW weight decay x learning rate.
TORCH_LINEAR_GRID = {"weight_decay": (0.0, 1e-4, 1e-2), "lr": (2e-3, 1e-2)}


def rbf_svm_grid(feature_dim: int) -> dict:
    """The rbf-svm head's grid for ``feature_dim``-d features: C x kernel width (``None`` = 1 / n_features)."""
    return {"C": RBF_SVM_C_GRID, "kmap__gamma": (None, *(f / feature_dim for f in RBF_GAMMA_FACTORS))}


@dataclass(frozen=True)
class HeadSpec:
    """One head, declared once: everything featx knows about it.

    Attributes:
        name: what users type (``--head NAME``, ``make fit HEAD=NAME``).
        build: returns a fresh, unfitted :class:`sklearn.pipeline.Pipeline` whose last step is ``clf``, with the
            head's default parameters (imports scikit-learn / torch inside, so naming a head stays instant).
        description: one line for ``featx heads`` and the README.
        key_params: the parameters worth tuning, shown by ``featx heads``.
        grid: the default search grid (short parameter name -> values), or a function of the feature dimension
            returning one, for grids that depend on it.
        path_param: the parameter the search walks in ascending order with warm starts (a regularisation path).
        row_bound: parameters that cannot exceed the training rows (k-NN's k, Nystroem landmarks); fits and
            grids lower them to the rows there are and say so.
        needs_text: made from a text tower (the zero-shot head), not trained: ``featx fit`` builds it from the
            cache's backbone, ``featx grid`` shows it as a baseline row beside the heads it searches.
        incremental: its ``clf`` has ``partial_fit`` taking new classes, and the steps before it learn nothing
            from data: ``featx fit --update`` folds new rows into a saved head.
    """

    name: str
    build: Callable[[], "Pipeline"]  # noqa: F821 - sklearn.pipeline.Pipeline
    description: str
    key_params: tuple[str, ...] = ()
    grid: dict | Callable[[int], dict] = field(default_factory=dict)
    path_param: str | None = None
    row_bound: tuple[str, ...] = ()
    needs_text: bool = False
    incremental: bool = False

    def default_grid(self, feature_dim: int | None = None) -> dict:
        """The default grid for features of this dimension (:data:`REFERENCE_DIM` when unknown: checking only)."""
        grid = self.grid(feature_dim or REFERENCE_DIM) if callable(self.grid) else self.grid
        return {k: tuple(v) for k, v in grid.items()}

    def defaults(self) -> dict:
        """The head's default parameters by short name (what :attr:`build` sets)."""
        return head_params(self.build())


#: The feature dimension a dimension-dependent grid is checked with before the cache is read (MobileNetV2's).
REFERENCE_DIM = 1280


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


def _zeroshot():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    from .zeroshot import ZeroShotClassifier

    return Pipeline([("norm", Normalizer()), ("clf", ZeroShotClassifier())])


def _slda():
    from sklearn.pipeline import Pipeline

    from .incremental import StreamingLDA

    return Pipeline([("clf", StreamingLDA())])


def _ncm():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    from .incremental import NearestClassMean

    return Pipeline([("norm", Normalizer()), ("clf", NearestClassMean())])


#: Streaming LDA's shrinkage towards the mean variance (tuned on val by featx fit).
SLDA_SHRINKAGE_GRID = (1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 0.6, 0.9)

HEADS: dict[str, HeadSpec] = {}


def register_head(spec: HeadSpec) -> HeadSpec:
    """Add a head to :data:`HEADS` (a new head is one declaration and this call; every command then knows it)."""
    if spec.name in HEADS:
        raise ValueError(f"a head named {spec.name!r} is already registered")
    HEADS[spec.name] = spec
    return spec


register_head(HeadSpec(
    "logreg", _logreg, "multinomial logistic regression, full-batch L-BFGS in torch, standardised features",
    ("C", "max_iter", "tol", "class_weight", "device"), grid={"C": LOGREG_C_GRID}, path_param="C"))
register_head(HeadSpec(
    "svm", _svm, "linear SVM (squared hinge, one-vs-rest), full-batch L-BFGS in torch, standardised features",
    ("C", "max_iter", "tol", "class_weight", "device"), grid={"C": LINEAR_SVM_C_GRID}, path_param="C"))
register_head(HeadSpec(
    "rbf-svm", _rbf_svm, "RBF-kernel SVM: Nystroem map (1024 landmarks) + the linear SVM",
    ("C", "kmap__gamma", "kmap__n_components", "class_weight"), grid=rbf_svm_grid, path_param="C",
    row_bound=("kmap__n_components",)))
register_head(HeadSpec(
    "knn", _knn, "k-nearest neighbours, cosine similarity, distance-weighted votes", ("n_neighbors", "weights"),
    grid=KNN_GRID, row_bound=("n_neighbors",)))
register_head(HeadSpec(
    "torch-linear", _torch_linear, "linear layer trained with AdamW in torch (CPU or CUDA)",
    ("lr", "weight_decay", "epochs", "batch_size", "device"), grid=TORCH_LINEAR_GRID))
register_head(HeadSpec(
    "slda", _slda, "streaming LDA: class means + one shared covariance, updated with new rows and classes "
    "(featx fit --update)", ("shrinkage",), grid={"shrinkage": SLDA_SHRINKAGE_GRID}, incremental=True))
register_head(HeadSpec(
    "ncm", _ncm, "nearest class mean on L2-normalised features, updated with new rows and classes (featx fit "
    "--update)", incremental=True))
register_head(HeadSpec(
    "zeroshot", _zeroshot, "zero-shot: class names + prompt templates through a clip: backbone's text tower, no "
    "training", ("logit_scale",), needs_text=True))


def trained_heads() -> list[str]:
    """The heads that learn from the cached features (every head but those made from a text tower)."""
    return [name for name, spec in HEADS.items() if not spec.needs_text]


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
            raise FeatxUsageError(f"head {name}: {_in_our_words(first_line(exc))}") from None


#: scikit-learn's (and featx's solvers') parameter message: "The 'C' parameter of LinearSVC must be ... Got -1 instead."
_PARAM_MESSAGE = re.compile(r"^The '(?P<name>[^']+)' parameter of \w+ must be (?P<what>.+?)\. Got (?P<got>.+) instead\.?$")


def _in_our_words(message: str) -> str:
    """A parameter message as featx says it (``C must be a float in the range (0.0, inf), got -1``), without the
    estimator class users never named; other messages unchanged."""
    m = _PARAM_MESSAGE.match(message)
    return f"{m['name']} must be {m['what']}, got {m['got']}" if m else message


def head_params(head) -> dict:
    """The parameters of a head by their short names, JSON-able values only."""
    values = head.get_params(deep=True)
    return {
        short: values[full]
        for short, full in sorted(param_names(head).items())
        if isinstance(values[full], (int, float, str, bool, type(None)))
    }


def clip_to_rows(head_name: str, params: dict, n_rows: int) -> tuple[dict, list[str]]:
    """``params`` with the head's row-bound parameters (k-NN's k, the Nystroem landmarks) lowered to ``n_rows``
    where larger (their default values included), and a note for each one lowered."""
    spec = HEADS[check_head(head_name)]
    if not spec.row_bound or n_rows < 1:
        return params, []
    defaults = None
    out, notes = dict(params), []
    for key in spec.row_bound:
        value = params.get(key)
        if value is None:
            defaults = defaults or spec.defaults()
            value = defaults.get(key)
        if value is None or value <= n_rows:
            continue
        out[key] = n_rows
        notes.append(f"{head_name}: {key}={value} needs at least {value} training rows and there are {n_rows}: "
                     f"using {key}={n_rows}")
    return out, notes


def bound_to_rows(head_name: str, head, n_rows: int) -> list[str]:
    """Lower ``head``'s row-bound parameters in place where they exceed ``n_rows`` (see :func:`clip_to_rows`);
    returns the notes (empty when nothing changed). The card then records the values used."""
    names, values = param_names(head), head.get_params(deep=True)
    current = {key: values[names[key]] for key in HEADS[check_head(head_name)].row_bound}
    params, notes = clip_to_rows(head_name, current, n_rows)
    head.set_params(**{names[k]: v for k, v in params.items() if v != current[k]})
    return notes
