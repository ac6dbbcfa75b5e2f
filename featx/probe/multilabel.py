"""Fitting, tuning and scoring multi-label heads (:mod:`featx.heads.multilabel`) on a multi-label cache.

Metrics (scikit-learn's): **mAP**, the mean over labels of the average precision of the label's scores (labels
with no positive row in the split are left out, and counted); micro- and macro-F1 of the label sets predicted at
the thresholds; each label's AP. Thresholds: per label, the score with the best F1 on the val split (midway between
two val scores; the neutral point -- decision 0, vote share 0.5 -- for a label without a positive val row, or
without a val split). The head's main parameter (C; k for k-NN) is tuned on val mAP over the head's own grid, as
``featx fit`` does for single-label heads; k-fold CV is not offered here (a val split is needed to tune).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..heads.multilabel import label_scores, make_multilabel_head, score_kind
from ..heads.persist import default_head_path, save_head
from ..heads.registry import head_params
from .fitting import fit_quietly
from .verdict import verdict_grid

__all__ = ["ML_METRICS", "label_ap", "mean_ap", "ml_metrics", "choose_thresholds", "fit_multilabel", "search_multilabel"]

#: The metrics printed per split, in order.
ML_METRICS = ("mAP", "micro_f1", "macro_f1")
NEUTRAL = {"decision": 0.0, "vote share": 0.5}


def label_ap(Y: np.ndarray, S: np.ndarray) -> dict[int, float]:
    """Label index -> the average precision of its scores, for the labels with a positive row in ``Y``."""
    from sklearn.metrics import average_precision_score

    return {int(j): float(average_precision_score(Y[:, j], S[:, j])) for j in np.flatnonzero(Y.sum(axis=0) > 0)}


def mean_ap(Y: np.ndarray, S: np.ndarray) -> float:
    """mAP: the mean of :func:`label_ap` (NaN when no label has a positive row)."""
    ap = label_ap(Y, S)
    return float(np.mean(list(ap.values()))) if ap else float("nan")


def ml_metrics(Y: np.ndarray, S: np.ndarray, thresholds, names) -> dict:
    """mAP, micro/macro F1 at ``thresholds`` and per-label AP of scores ``S`` against the label matrix ``Y``."""
    from sklearn.metrics import f1_score

    if not len(Y):
        return {}
    present = Y.sum(axis=0) > 0
    by_label = label_ap(Y, S)
    ap = {names[j]: round(v, 4) for j, v in by_label.items()}
    P = (S >= np.asarray(thresholds)).astype(int)
    return {"n": int(len(Y)), "mAP": float(np.mean(list(by_label.values()))) if by_label else float("nan"),
            "micro_f1": float(f1_score(Y, P, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(Y[:, present], P[:, present], average="macro", zero_division=0))
            if present.any() else float("nan"),
            "labels_scored": int(present.sum()), "per_label_ap": ap}


def choose_thresholds(Y: np.ndarray | None, S: np.ndarray | None, kind: str, n_labels: int) -> list[float]:
    """Per label, the threshold with the best F1 on (Y, S) (see the module doc)."""
    neutral = NEUTRAL[kind]
    if Y is None or not len(Y):
        return [neutral] * n_labels
    out = []
    for j in range(n_labels):
        y, s = Y[:, j], S[:, j]
        if not y.any():
            out.append(neutral)
            continue
        values = np.unique(s)
        cuts = np.concatenate([(values[:-1] + values[1:]) / 2, [values[-1]]]) if len(values) > 1 else values
        f1 = [2 * int(((s >= t) & (y == 1)).sum()) / max(int((s >= t).sum()) + int(y.sum()), 1) for t in cuts]
        out.append(round(float(cuts[int(np.argmax(f1))]), 6))
    return out


def _fit(name, params, X, Y):
    return fit_quietly(name, make_multilabel_head(name, params), X, Y)


def _splits(fs):
    out = {}
    for split in ("train", "val", "test"):
        if split in fs:
            X, Y = fs[split].labelled_sets()
            out[split] = (X, Y) if len(Y) else None
    if not out.get("train"):
        raise FeatxError(f"{fs.path} has no labelled train rows to fit on")
    return out


def tune(name: str, fixed: dict, data: dict, dim: int) -> dict | None:
    """The head's main parameter chosen on val mAP over its grid (``None``: no val split, no grid, or pinned)."""
    X, Y = data["train"]
    pname, values = verdict_grid(name, dim, len(Y), points=12)
    if data.get("val") is None or pname is None or pname in fixed or len(values) < 2:
        return None
    t0 = time.perf_counter()
    Xv, Yv = data["val"]
    scores = []
    for v in values:
        scores.append(mean_ap(Yv, label_scores(_fit(name, {**fixed, pname: v}, X, Y), Xv)))
    best = int(np.nanargmax(scores))  # ties: the first value (the strongest regularisation for C)
    return {"param": pname, "values": list(values), "chosen": values[best], "score": round(scores[best], 4),
            "metric": "mAP", "selection": "val", "seconds": round(time.perf_counter() - t0, 2)}


def fit_multilabel(name: str, params: dict, fs, *, out=None, do_tune: bool = True) -> dict:
    """Fit head ``name`` on a multi-label cache's train split (its main parameter tuned on val mAP unless given),
    choose the thresholds on val, score val and test, save the head and its card. Returns the card's record."""
    data = _splits(fs)
    names = list(fs.classes)
    tuning = tune(name, params, data, fs.feature_dim) if do_tune else None
    if tuning:
        params = {**params, tuning["param"]: tuning["chosen"]}
    X, Y = data["train"]
    t0 = time.perf_counter()
    head = _fit(name, params, X, Y)
    seconds = time.perf_counter() - t0
    kind = score_kind(head)
    val = data.get("val")
    scores = {s: label_scores(head, data[s][0]) for s in ("val", "test") if data.get(s) is not None}
    thresholds = choose_thresholds(val[1] if val else None, scores.get("val"), kind, len(names))
    metrics = {s: ml_metrics(data[s][1], S, thresholds, names) for s, S in scores.items()}
    target = Path(out) if out else default_head_path(fs.path, name)
    record = {"thresholds": thresholds, "score": kind, "chosen_on": "val" if val else "none (no val split: the "
              "neutral point)", "separator": ";", "rule": "per label, the val score with the best F1"}
    head_path, card_path = save_head(head, target, head_name=name, params=head_params(head), metrics=metrics,
                                     fit_seconds=seconds, n_train=len(Y), fs=fs,
                                     extra={"multilabel": record, **({"tuning": tuning} if tuning else {})})
    return {"head_path": head_path, "card_path": card_path, "metrics": metrics, "tuning": tuning,
            "seconds": seconds, "n_train": len(Y), "params": head_params(head), "multilabel": record}


def search_multilabel(fs, heads: list[str], grids: dict[str, dict]) -> dict:
    """``featx grid`` on a multi-label cache: every point of each head's grid fitted on train and scored by val mAP;
    the best point's test metrics at thresholds chosen on val; the best head by val mAP."""
    import itertools

    data = _splits(fs)
    if data.get("val") is None:
        raise FeatxError(f"{fs.path}: a multi-label search needs a val split to choose on")
    names = list(fs.classes)
    (X, Y), (Xv, Yv) = data["train"], data["val"]
    rows, val_scores = [], {}
    for name in heads:
        make_multilabel_head(name)  # refused in one line before any fit
        grid = grids.get(name) or {}
        keys = list(grid)
        sweep, t0, kept = [], time.perf_counter(), None  # kept: the best point's head and val scores so far
        for combo in itertools.product(*(grid[k] for k in keys)):  # an empty grid: one point, the defaults
            params = dict(zip(keys, combo))
            t1 = time.perf_counter()
            head = _fit(name, params, X, Y)
            S = label_scores(head, Xv)
            sweep.append({"params": params, "score": round(mean_ap(Yv, S), 4),
                          "fit_seconds": round(time.perf_counter() - t1, 3)})
            if kept is None or sweep[-1]["score"] > kept[0]["score"]:  # ties: the first point
                kept = (sweep[-1], head, S)
        best, head, val_scores[name] = kept
        thresholds = choose_thresholds(Yv, val_scores[name], score_kind(head), len(names))
        test = (ml_metrics(data["test"][1], label_scores(head, data["test"][0]), thresholds, names)
                if data.get("test") is not None else {})
        rows.append({"head": name, "grid": {k: list(v) for k, v in grid.items()}, "sweep": sweep,
                     "best_params": best["params"], "best_score": best["score"], "test": test,
                     "search_seconds": round(time.perf_counter() - t0, 2)})
    chosen = max(rows, key=lambda r: r["best_score"])["head"] if rows else None
    return {"metric": "mAP", "selection": "val", "heads": rows, "best_head": chosen,
            "choice": _choice(chosen, Yv, val_scores) if chosen else None}


#: Bootstrap resamples of the val rows for the best head's mAP gain over each other head.
BOOTSTRAP = 200


def _choice(chosen: str, Yv: np.ndarray, val_scores: dict, seed: int = 0) -> dict:
    """The best head by val mAP and, against each other head, the paired bootstrap of the val mAP gain (95%
    interval): "better" when the interval is above 0, else "can't tell"."""
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, len(Yv), len(Yv)) for _ in range(BOOTSTRAP)]
    against = {}
    for other, S in val_scores.items():
        if other == chosen:
            continue
        gains = np.array([mean_ap(Yv[i], val_scores[chosen][i]) - mean_ap(Yv[i], S[i]) for i in samples])
        lo, hi = np.nanpercentile(gains, [2.5, 97.5])
        gain = mean_ap(Yv, val_scores[chosen]) - mean_ap(Yv, S)
        against[other] = {"gain": round(gain, 4), "ci": [round(float(lo), 4), round(float(hi), 4)],
                          "verdict": "better" if lo > 0 else "can't tell"}
    return {"chosen": chosen, "against": against,
            "rule": f"the highest val mAP; against each other head a paired bootstrap of the val rows ({BOOTSTRAP} "
                    "resamples, 95% interval of the mAP gain): better when the interval is above 0, else can't tell"}
