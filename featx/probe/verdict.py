"""Does pretraining help here? One protocol, used by ``featx fit``, ``featx grid`` and ``featx rank`` alike.

1. **Items**: every feature set (the pretrained features, the random-init features, raw pixels) is scored on the
   same labelled items: the same train rows and the same test rows (``rank``: the same cross-validation folds).
2. **Tuning**: the head's main hyper-parameter (:func:`verdict_grid`: the regularisation ``C``, k-NN's ``k``, ...)
   is chosen *separately for each feature set* by the same rule: hold out a stratified :data:`TUNE_FRACTION` of the
   train rows, fit each value on the rest, keep the value with the best held-out accuracy (ties: the earlier value
   of the grid), then refit on all train rows. A baseline never borrows the
   pretrained features' tuning.
3. **Baseline**: of random-init and raw pixels, the one with the higher *tuning* (not test) accuracy.
4. **Comparison**: per-item correctness of the two heads on the same test items; the gain is the difference of
   accuracies, its :data:`LEVEL` interval a paired bootstrap over items (:data:`BOOTSTRAP` resamples, seeded),
   with McNemar's exact p-value beside it.
5. **Verdict**: ``helps`` when the interval lies above 0, ``hurts`` when it lies below 0, otherwise
   ``inconclusive`` ("can't tell at this sample size"), with about how many test items would resolve it (the
   interval narrows as 1/sqrt(n): ``n * (half-width / |gain|)^2``).

The thresholds are conventions, not tuned on data: a 95% interval, 2,000 resamples, a 20% tuning split.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LEVEL", "BOOTSTRAP", "TUNE_FRACTION", "GRID_POINTS", "verdict_grid", "tuned_correct", "oof_correct",
           "paired_gain", "score_sets", "verdict_of", "transfer_verdict", "verdict_line"]

#: Coverage of the gain's interval.
LEVEL = 0.95
#: Paired bootstrap resamples of the test items.
BOOTSTRAP = 2000
#: Share of the train rows held out to choose each feature set's hyper-parameter.
TUNE_FRACTION = 0.2
#: Most values of the tuned hyper-parameter (evenly spaced over the head's own grid).
GRID_POINTS = 5


def verdict_grid(head_name: str, feature_dim: int, n_train: int, points: int | None = None) -> tuple[str | None, tuple]:
    """The hyper-parameter the verdict tunes for ``head_name`` and its values: the head's search parameter (its
    regularisation path, else the first of its grid), thinned to ``points`` (default :data:`GRID_POINTS`) evenly
    spaced values of its default grid and bound by the train rows. ``(None, ())`` for a head without a grid."""
    points = points or GRID_POINTS
    from ..heads.registry import HEADS

    spec = HEADS[head_name]
    grid = spec.default_grid(feature_dim)
    if not grid:
        return None, ()
    name = spec.path_param if spec.path_param in grid else next(iter(grid))
    values = [v for v in grid[name] if not (name in spec.row_bound and isinstance(v, int) and v >= n_train)]
    values = values or [min(grid[name], key=lambda v: (v is None, v))]
    if len(values) > points:
        values = [values[i] for i in np.unique(np.linspace(0, len(values) - 1, points).round().astype(int))]
    return name, tuple(values)


def _split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified (fit, tune) split of rows ``y`` (classes with one row stay in fit)."""
    rng = np.random.default_rng(seed)
    fit, tune = [], []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(rows) * TUNE_FRACTION)) if len(rows) > 1 else 0
        tune.extend(rows[:k])
        fit.extend(rows[k:])
    return np.sort(np.asarray(fit, dtype=int)), np.sort(np.asarray(tune, dtype=int))


def _fit_predict(head_name: str, params: dict, Xtr, ytr, Xte) -> np.ndarray:
    from ..heads.registry import make_head
    from .fitting import fit_quietly

    return fit_quietly(head_name, make_head(head_name, params), Xtr, ytr).predict(Xte)


def tuned_correct(head_name: str, params: dict, Xtr, ytr, Xte, yte, *, seed: int = 0) -> dict:
    """Step 2 on one feature set: the tuned value, its tuning accuracy, and per-test-item correctness."""
    Xtr, Xte = np.asarray(Xtr, dtype=np.float32), np.asarray(Xte, dtype=np.float32)
    name, values = verdict_grid(head_name, Xtr.shape[1], len(ytr))
    fit, tune = _split(np.asarray(ytr), seed)
    best, best_acc = None, -1.0
    if name is not None and len(tune) and len(np.unique(ytr[fit])) > 1:
        for v in values:
            acc = float(np.mean(_fit_predict(head_name, {**params, name: v}, Xtr[fit], ytr[fit], Xtr[tune])
                                == ytr[tune]))
            if acc > best_acc:
                best, best_acc = v, acc
    chosen = {**params, name: best} if best is not None else dict(params)
    correct = _fit_predict(head_name, chosen, Xtr, ytr, Xte) == yte
    return {"param": name, "value": best, "tune_top1": round(best_acc, 4) if best is not None else None,
            "correct": correct}


def oof_correct(head_name: str, params: dict, X, y, folds: int, *, seed: int = 0) -> dict:
    """Step 2 under cross-validation (``rank``, which has no test split): per-item correctness of out-of-fold
    predictions, each fold's head tuned on its own train rows; the folds depend only on ``y`` and ``seed``, so
    every feature set of the same items gets the same ones."""
    from .evaluate import stratified_folds

    y = np.asarray(y)
    correct = np.zeros(len(y), dtype=bool)
    tune_acc = []
    for i, (train, test) in enumerate(stratified_folds(y, folds, seed)):
        r = tuned_correct(head_name, params, X[train], y[train], X[test], y[test], seed=seed + i)
        correct[test] = r["correct"]
        if r["tune_top1"] is not None:
            tune_acc.append(r["tune_top1"])
    return {"param": r["param"], "tune_top1": round(float(np.mean(tune_acc)), 4) if tune_acc else None,
            "correct": correct}


def paired_gain(a: np.ndarray, b: np.ndarray, *, seed: int = 0) -> dict:
    """Accuracy of ``a`` minus that of ``b`` (per-item correctness on the same items), its paired-bootstrap
    :data:`LEVEL` interval and McNemar's exact two-sided p-value."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    diff = a.astype(np.int8) - b.astype(np.int8)
    gain = float(diff.mean()) if n else 0.0
    rng = np.random.default_rng(seed)
    boots = np.empty(BOOTSTRAP)
    for i in range(0, BOOTSTRAP, 500):  # in blocks: at most 500 x n indices at once
        k = min(500, BOOTSTRAP - i)
        boots[i:i + k] = diff[rng.integers(0, n, size=(k, n))].mean(axis=1) if n else 0.0
    lo, hi = np.quantile(boots, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"gain": round(gain, 4), "ci_low": round(float(lo), 4), "ci_high": round(float(hi), 4), "n_test": n,
            "only_a": only_a, "only_b": only_b, "mcnemar_p": round(float(p), 4)}


def _decide(g: dict) -> tuple[str, int | None]:
    if g["ci_low"] > 0:
        return "helps", None
    if g["ci_high"] < 0:
        return "hurts", None
    half = (g["ci_high"] - g["ci_low"]) / 2
    if g["gain"] == 0 or half <= 0:
        return "inconclusive", None
    return "inconclusive", int(math.ceil(g["n_test"] * (half / abs(g["gain"])) ** 2))


def score_sets(head_name: str, params: dict, sets: dict, *, folds: int | None = None, seed: int = 0) -> dict:
    """Step 2 on each of ``sets`` (name -> ``(Xtr, ytr, Xte, yte)``, or ``(X, y)`` with ``folds``)."""
    return {name: (oof_correct(head_name, params, *arrays, folds, seed=seed) if folds is not None
                   else tuned_correct(head_name, params, *arrays, seed=seed)) for name, arrays in sets.items()}


def verdict_of(scored: dict, head_name: str, *, folds: int | None = None, seed: int = 0) -> dict:
    """Steps 3-5 on :func:`score_sets`' result (``"pretrained"`` and the baselines): the ``transfer`` record."""
    baselines = [k for k in scored if k != "pretrained"]
    baseline = max(baselines, key=lambda k: (scored[k]["tune_top1"] or 0.0, -baselines.index(k)))
    g = paired_gain(scored["pretrained"]["correct"], scored[baseline]["correct"], seed=seed)
    verdict, needed = _decide(g)
    return {
        "verdict": verdict, "gain": g["gain"], "ci_low": g["ci_low"], "ci_high": g["ci_high"], "n_test": g["n_test"],
        "head": head_name, "baseline": baseline, "mcnemar_p": g["mcnemar_p"],
        **({"n_test_needed": needed} if needed else {}),
        "top1": {k: round(float(np.mean(r["correct"])), 4) for k, r in scored.items()},
        "tuned": {k: {"param": r["param"], "value": r.get("value"), "tune_top1": r["tune_top1"]}
                  for k, r in scored.items()},
        "rule": (f"{int(LEVEL * 100)}% paired-bootstrap interval of the test top-1 gain over the baseline with the "
                 f"better tuning accuracy ({BOOTSTRAP} resamples); helps / hurts when it excludes 0, else "
                 f"inconclusive; each feature set's {scored['pretrained']['param'] or 'head'} tuned on "
                 f"{int(TUNE_FRACTION * 100)}% of its train rows"
                 + (f"; {folds}-fold out-of-fold predictions" if folds is not None else "")),
    }


def transfer_verdict(head_name: str, params: dict, sets: dict, *, folds: int | None = None, seed: int = 0) -> dict:
    """The protocol on ``sets``: ``{"pretrained": (Xtr, ytr, Xte, yte), "random_init": ..., "raw_pixels": ...}``
    (the same items in the same order in each; ``folds``: cross-validate ``(X, y)`` pairs instead, as ``rank``
    does). Returns the ``transfer`` record: ``verdict``, ``gain``, ``ci_low``, ``ci_high``, ``n_test``, ``head``,
    ``baseline``, each set's accuracy and tuned value, the rule."""
    return verdict_of(score_sets(head_name, params, sets, folds=folds, seed=seed), head_name, folds=folds, seed=seed)


def verdict_line(t: dict) -> str:
    """The verdict in one sentence, with its statistic and interval."""
    what = {"helps": "pretraining helps", "hurts": "pretraining HURTS (negative transfer)",
            "inconclusive": "can't tell whether pretraining helps at this sample size"}[t["verdict"]]
    more = (f"; about {t['n_test_needed']} would resolve a gain this size" if t.get("n_test_needed") else "")
    items = "items, out-of-fold" if "out-of-fold" in t.get("rule", "") else "test items"
    return (f"{what}: {t['head']} top-1 gain over {t['baseline'].replace('_', '-')} {t['gain']:+.4f} "
            f"(95% CI {t['ci_low']:+.4f} .. {t['ci_high']:+.4f}, {t['n_test']} {items}{more})")
