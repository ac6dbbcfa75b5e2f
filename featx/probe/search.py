"""Hyper-parameter search on cached features: the linear-probe protocol.

Protocol (Kornblith, Shlens & Le 2019, "Do Better ImageNet Models Transfer Better?"; the DINOv2
linear evaluation): sweep each head's grid, fitting on the train split and scoring on the
validation split (stratified k-fold CV on train when the cache has no validation split), pick
the best point, refit it on train + val, and evaluate on test once.

Speed: the L-BFGS heads (logreg, svm, rbf-svm) walk their C path from strong to weak
regularisation with warm starts (each fit starts from the previous solution), one path per job; jobs run in parallel with joblib,
which memory-maps the feature matrix for its worker processes instead of copying it per job; on
the Dask backend the matrix is scattered to the cluster once and shared by every task.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs, parallel_config
from joblib.parallel import get_active_backend
from sklearn.model_selection import StratifiedKFold

from ..errors import FeatxError, FeatxUsageError
from ..heads.registry import HEADS, bound_to_rows, check_head, head_params, make_head, param_names
from .evaluate import evaluate

#: The solver tolerance along a warm-started path: a point's validation *accuracy* needs the argmax, not the last
#: digits of the probabilities, so the path runs at this looser tolerance (when the head's own is tighter) and the
#: chosen point is refitted at the head's own tolerance, whose probabilities are reported (bench/bench_path.py:
#: the same chosen C and test probabilities, the path several times faster).
PATH_TOL = 1e-4

#: scikit-learn's warning when a Nystroem map has more landmarks than rows (it then uses every row);
#: featx says how many landmarks were used in its own words instead.
NYSTROEM_FEW_ROWS = r"n_components > n_samples"

__all__ = ["PATH_TOL", "HeadSearch", "search_head", "select_layers", "tune_head", "parse_grid", "grid_points",
           "few_shot"]


@dataclass
class HeadSearch:
    """The outcome of one head's search."""

    head: str
    grid: dict
    selection: str  # "val" or "<k>-fold CV"
    sweep: list[dict] = field(default_factory=list)  # {"params", "score", "fit_seconds"}
    best_params: dict = field(default_factory=dict)
    best_score: float = float("nan")
    test: dict = field(default_factory=dict)
    refit_seconds: float = 0.0
    estimator: object = None  # the refitted best head
    test_without_leaked: dict = field(default_factory=dict)  # test without the items that copy a train item

    def as_dict(self) -> dict:
        return {
            "head": self.head,
            "grid": {k: list(v) for k, v in self.grid.items()},
            "selection": self.selection,
            "sweep": self.sweep,
            "best_params": self.best_params,
            "val_score": self.best_score,
            "test": self.test,
            "refit_seconds": round(self.refit_seconds, 3),
            "params": head_params(self.estimator) if self.estimator is not None else {},
            **({"test_without_leaked": self.test_without_leaked} if self.test_without_leaked else {}),
        }


def parse_grid(head: str, overrides: dict | None = None, *, feature_dim: int | None = None) -> dict:
    """The head's default grid (its :class:`~featx.heads.registry.HeadSpec`, for ``feature_dim``-d features) with
    overrides (``{"C": [0.1, 1]}``) applied, checked before any work. Without ``feature_dim`` a grid that depends on
    it is checked at a reference dimension: call again with the cache's dimension before searching."""
    grid = HEADS[check_head(head)].default_grid(feature_dim)
    for key, values in (overrides or {}).items():
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if not values:
            raise FeatxUsageError(f"grid for {head} parameter {key!r} is empty")
        grid[key] = values
    for point in grid_points(grid):
        make_head(head, point)  # unknown names and wrong types/ranges fail here, in one line
    return grid


def grid_points(grid: dict) -> list[dict]:
    """Every combination of a grid's values, as parameter dicts."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _fit_path(head: str, fixed: dict, path: tuple, X, y, Xv, yv, metric: str):
    """Fit the points of one path ``(key, values)``, warm-started along ``key`` (``(None, None)``: the one point
    ``fixed``), on (X, y) and score each on (Xv, yv). The arrays are arguments of their own so that joblib's Dask
    backend can replace them with the features it scattered once."""
    path_key, path_values = path
    rows = []
    est = make_head(head, fixed)
    clf = est.named_steps["clf"].get_params()
    warm = path_key is not None and "warm_start" in clf
    if warm:
        est.set_params(clf__warm_start=True)
        if "tol" in clf and clf["tol"] < PATH_TOL and "tol" not in fixed:
            est.set_params(clf__tol=PATH_TOL)
    for value in path_values if path_key else [None]:
        params = dict(fixed, **({path_key: value} if path_key else {}))
        if path_key:
            est.set_params(**{param_names(est)[path_key]: value})
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # runs in joblib's workers too; featx reports the landmark count itself
            warnings.filterwarnings("ignore", message=NYSTROEM_FEW_ROWS)
            est.fit(X, y)
        seconds = time.perf_counter() - t0
        rows.append({"params": params, "score": evaluate(est, Xv, yv)[metric], "fit_seconds": round(seconds, 3)})
    return rows


def _sweep(head: str, grid: dict, X, y, Xv, yv, *, metric: str, jobs: int) -> list[dict]:
    """Every grid point fitted on (X, y) and scored on (Xv, yv), in parallel.

    A head with a path parameter (:attr:`HeadSpec.path_param <featx.heads.registry.HeadSpec>`) walks it in
    ascending order with warm starts, split into one contiguous segment per worker.
    """
    path_key = HEADS[head].path_param
    if path_key in grid:
        values = sorted(grid[path_key])
        n = max(1, min(effective_n_jobs(jobs), len(values)))
        segments = [list(seg) for seg in np.array_split(np.array(values, dtype=object), n) if len(seg)]
        rest = {k: v for k, v in grid.items() if k != path_key}
        tasks = [delayed(_fit_path)(head, fixed, (path_key, seg), X, y, Xv, yv, metric)
                 for fixed in grid_points(rest) for seg in segments]
    else:
        tasks = [delayed(_fit_path)(head, point, (None, None), X, y, Xv, yv, metric) for point in grid_points(grid)]
    with _scattered(X, y, Xv, yv):
        return [row for rows in Parallel(n_jobs=jobs)(tasks) for row in rows]


def _scattered(*arrays):
    """On joblib's Dask backend, send the arrays to the cluster once and let every task refer to
    them (``scatter``), instead of shipping the feature matrix with each task. Elsewhere: nothing
    (loky already memory-maps large arrays for its workers)."""
    backend, _ = get_active_backend()
    if type(backend).__name__ != "DaskDistributedBackend":
        return contextlib.nullcontext()
    return parallel_config(backend="dask", scatter=list(arrays))


def _select(head: str, grid: dict, fs, X, y, *, folds: int, metric: str, jobs: int,
            columns: list[int] | None = None) -> tuple[list[dict], str]:
    """Every point of ``grid`` fitted on the train rows ``(X, y)`` and scored on the val split, or by stratified
    ``folds``-fold CV on train when the cache has none: the sweep rows and how they were scored. ``columns``: only
    these feature columns (chosen layers), of the train and the val rows alike."""
    X = X[:, columns] if columns is not None else X
    if "val" in fs:
        Xv, yv = fs["val"].labelled()
        Xv = Xv[:, columns] if columns is not None else Xv
        return _sweep(head, grid, X, y, Xv, yv, metric=metric, jobs=jobs), "val"
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < folds:
        raise FeatxError(
            f"{fs.path}: no validation split, and class {classes[counts.argmin()]} has {counts.min()} "
            f"training samples, fewer than the {folds} folds of cross-validation"
        )
    per_fold = [_sweep(head, grid, X[tr], y[tr], X[va], y[va], metric=metric, jobs=jobs)
                for tr, va in StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y)]
    sweep = [{"params": rows[0]["params"], "score": float(np.mean([r["score"] for r in rows])),
              "fit_seconds": round(float(np.sum([r["fit_seconds"] for r in rows])), 3)} for rows in zip(*per_fold)]
    return sweep, f"{folds}-fold CV"


#: Values of the main parameter ``featx fit`` tries (evenly spaced over the head's grid: logreg's 45 C values
#: 1e-6 .. 1e5 become one per decade), and the folds it cross-validates with when the cache has no val split.
FIT_TUNE_POINTS = 12
FIT_TUNE_FOLDS = 3


def tune_head(head: str, fs, *, fixed: dict | None = None, folds: int = FIT_TUNE_FOLDS, metric: str = "top1",
              jobs: int = 1, columns: list[int] | None = None) -> dict | None:
    """What ``featx fit`` does before it fits: the head's main parameter (its regularisation path, else the first
    of its grid: logreg/svm/rbf-svm ``C``, k-NN ``n_neighbors``, torch-linear ``weight_decay``) chosen over the
    head's own grid (:data:`FIT_TUNE_POINTS` of its values) on the val split (``folds``-fold CV on train without
    one), warm-started along the path at
    :data:`PATH_TOL`; the other parameters as ``fixed``. Ties go to the first value of the grid (the strongest
    regularisation for ``C``). ``None`` when the head has no grid or ``fixed`` pins that parameter.

    Returns ``{"param", "values", "chosen", "score", "metric", "selection", "seconds"}`` (for the card)."""
    from .verdict import verdict_grid

    fixed = dict(fixed or {})
    X, y = fs["train"].labelled()
    dim = len(columns) if columns is not None else X.shape[1]
    name, values = verdict_grid(check_head(head), dim, len(y), points=FIT_TUNE_POINTS)
    if name is None or name in fixed or len(values) < 2 or len(np.unique(y)) < 2:
        return None
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NYSTROEM_FEW_ROWS)
        try:
            sweep, selection = _select(head, {**{k: (v,) for k, v in fixed.items()}, name: tuple(values)},
                                       fs, X, y, folds=folds, metric=metric, jobs=jobs, columns=columns)
        except FeatxError:  # too few rows to select on: the defaults stand
            return None
    order = {v: i for i, v in enumerate(values)}
    best = max(sweep, key=lambda r: (r["score"], -order[r["params"][name]]))
    return {"param": name, "values": list(values), "chosen": best["params"][name], "score": round(best["score"], 4),
            "metric": metric, "selection": selection, "seconds": round(time.perf_counter() - t0, 2)}


def select_layers(head: str, params: dict, fs, *, metric: str = "top1", folds: int = 5, jobs: int = 1) -> dict:
    """Greedy forward selection of the layers of a multi-layer cache (its ``layer_parts``; Head2Toe's question, its
    cheapest answer): start from none, add the layer whose columns raise the validation score most (``head`` at
    ``params``, val or k-fold CV as the search), stop when no layer raises it. Returns ``{"chosen", "score",
    "trace"}`` (each step: the layers so far and their score)."""
    from ..heads.layers import layer_columns

    names = [n for n, _ in fs.meta["layer_parts"]]
    X, y = fs["train"].labelled()
    point = {k: (v,) for k, v in params.items()}
    chosen, best, trace = [], -np.inf, []
    while len(chosen) < len(names):
        scores = {}
        for name in (n for n in names if n not in chosen):
            use, _ = layer_columns(fs.meta, ",".join([*chosen, name]))
            sweep, _ = _select(head, point, fs, X, y, folds=folds, metric=metric, jobs=jobs, columns=use)
            scores[name] = sweep[0]["score"]
        name = max(scores, key=scores.get)
        if scores[name] <= best:
            break
        chosen.append(name)
        best = scores[name]
        trace.append({"layers": [n for n in names if n in chosen], "score": round(best, 4)})
    return {"chosen": [n for n in names if n in chosen], "score": round(float(best), 4), "trace": trace}


def search_head(head: str, fs, *, grid: dict | None = None, metric: str = "top1", jobs: int = 1,
                folds: int = 5, class_weight: str | None = None, columns: list[int] | None = None) -> HeadSearch:
    """Run the protocol for one head on a :class:`featx.FeatureSet`.

    Args:
        head: head name.
        fs: the cache (needs ``train`` and ``test``; ``val`` is used for selection when present).
        grid: the grid (already checked by :func:`parse_grid`); default: the head's, for the cache's dimension.
        metric: the selection score, a key of :data:`featx.options.METRICS`.
        jobs: parallel fits (joblib ``n_jobs``; -1 = all cores).
        folds: k of the stratified k-fold CV used when there is no validation split.
        class_weight: ``"balanced"`` for every head that supports it.
        columns: only these feature columns (chosen layers of a multi-layer cache); the refitted head keeps them
            itself (:class:`featx.heads.layers.LayerColumns`), so it still takes the whole vector.
    """
    from ..heads.layers import with_layers

    grid = dict(grid or parse_grid(head, feature_dim=fs.feature_dim if columns is None else len(columns)))
    if class_weight:
        if "class_weight" not in param_names(make_head(head)):
            raise FeatxError(f"head {head} does not support class weights")
        grid["class_weight"] = (class_weight,)
    train = fs["train"]
    X, y = train.labelled()
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise FeatxError(f"{fs.path}: the train split has {len(classes)} labelled class; a search needs two")
    result = HeadSearch(head=head, grid=grid, selection="val")
    result.sweep, result.selection = _select(head, grid, fs, X, y, folds=folds, metric=metric, jobs=jobs,
                                             columns=columns)
    if "val" in fs:
        Xv, yv = fs["val"].labelled()
        X_all, y_all = np.concatenate([X, Xv]), np.concatenate([y, yv])
    else:
        X_all, y_all = X, y
    best = max(result.sweep, key=lambda r: r["score"])
    result.best_params, result.best_score = best["params"], best["score"]
    est = with_layers(make_head(head, best["params"]), columns)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NYSTROEM_FEW_ROWS)
        est.fit(X_all, y_all)
    result.refit_seconds = time.perf_counter() - t0
    result.estimator = est
    test = fs["test"] if "test" in fs else None
    if test is not None:
        result.test = evaluate(est, test.X, test.y)
    return result


def few_shot(head: str, params: dict, fs, *, shots, tries: int = 5, seed: int = 0) -> list[dict]:
    """Test top-1 when training on k images per class (sampled ``tries`` times): mean and std per k."""
    X, y = fs["train"].labelled()
    Xt, yt = fs["test"].labelled()
    rng = np.random.default_rng(seed)
    out = []
    for k in shots:
        scores = []
        for _ in range(tries):
            idx = np.concatenate([rng.choice(np.flatnonzero(y == c), size=min(k, int((y == c).sum())), replace=False)
                                  for c in np.unique(y)])
            est = make_head(head, params)  # a fresh, unfitted head each try
            bound_to_rows(head, est, len(idx))  # k-NN's k, the Nystroem landmarks: at most the rows drawn
            est.fit(X[idx], y[idx])
            scores.append(evaluate(est, Xt, yt)["top1"])
        out.append({"shots": int(k), "mean": float(np.mean(scores)), "std": float(np.std(scores)), "tries": tries})
    return out
