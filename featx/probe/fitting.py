"""Fit one head on a cache's train split, score it on val and test, save it with its card."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache.store import open_features
from ..errors import FeatxError
from ..heads.persist import default_head_path, save_head
from ..heads.registry import bound_to_rows, head_params
from ..util import first_line, softmax
from .evaluate import evaluate, metrics

__all__ = ["FitResult", "fit_head", "fit_quietly", "train_views"]

log = logging.getLogger("featx")


@dataclass(frozen=True)
class FitResult:
    head_path: Path
    card_path: Path
    params: dict
    metrics: dict
    fit_seconds: float
    n_train: int
    n_features: int
    n_classes: int
    calibration: dict | None = None


def fit_quietly(head_name: str, head, X, y):
    """``head.fit(X, y)`` with scikit-learn's known notices in featx's own words, and a one-line error
    for what scikit-learn refuses."""
    for note in bound_to_rows(head_name, head, len(y)):
        log.info(f"note: {note}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            head.fit(X, y)
        except (ValueError, TypeError) as exc:  # sklearn's InvalidParameterError is a ValueError
            raise FeatxError(f"cannot fit {head_name}: {first_line(exc)}") from None
    for w in caught:  # (the Nystroem landmarks were lowered to the rows above: no warning about them)
        if not issubclass(w.category, (DeprecationWarning, FutureWarning)):
            log.info(f"note: {head_name}: {first_line(Warning(str(w.message)))}")
    return head


def train_views(fs) -> tuple[list, list[Path]]:
    """The labelled train rows of the augmented views of cache ``fs`` (``featx extract --views K``: the caches
    ``<cache>.view<k>.h5`` whose source record says they are views of this cache's key), and their paths; a view
    cache of another cache is passed over with a note."""
    from ..data.views import view_path

    parts, paths = [], []
    k = 1
    while view_path(fs.path, k).is_file():
        path = view_path(fs.path, k)
        k += 1
        try:
            view = open_features(path)
        except FeatxError as exc:
            log.info(f"note: view {path} not used: {exc}")
            continue
        of = ((view.meta.get("source") or {}).get("views") or {}).get("of")
        if of != fs.cache_key:
            log.info(f"note: {path} holds views of another cache (key {of}, not {fs.cache_key}): not used")
            continue
        parts.append(view["train"].labelled())
        paths.append(path)
    return parts, paths


def fit_head(head_name: str, head, cache, *, out=None, tuning: dict | None = None, views: bool = True,
             card: dict | None = None, memory_budget: int | None = None,
             leaked: dict[str, set[str]] | None = None) -> FitResult:
    """Train ``head`` (a fresh estimator from :func:`featx.heads.registry.make_head`) on ``cache``'s
    train split, evaluate on val and test, save it (default ``<cache>.<head>.skops``) and its card (with
    ``tuning``, :func:`featx.probe.search.tune_head`'s record, when its parameters were chosen on val, and the
    fields of ``card``). A train split larger than ``memory_budget`` bytes is fitted streaming
    (:mod:`featx.heads.streaming`). ``leaked`` (``{split: ids}``, items that copy a train item, from an audit):
    each such split is also scored without them, as ``<split>_without_leaked``."""
    path = Path(cache)
    fs = open_features(path)
    if "train" not in fs:
        raise FeatxError(f"{path} has no train split to fit on")
    from ..heads.streaming import train_bytes

    if memory_budget is not None and train_bytes(fs["train"]) > memory_budget:
        return _fit_streaming(head_name, head, fs, out=out, tuning=tuning, card=card, memory_budget=memory_budget)
    X, y = fs["train"].labelled()
    if len(np.unique(y)) < 2:
        raise FeatxError(f"{path}: the train split needs at least two labelled classes to fit a head")
    view_rows, view_paths = train_views(fs) if views else ([], [])
    if view_rows:  # the augmented views train too; val and test stay the centre view
        log.info(f"training on the train rows and {len(view_rows)} augmented view(s) of them "
                 f"({', '.join(p.name for p in view_paths)})")
        X = np.concatenate([X, *(v[0] for v in view_rows)])
        y = np.concatenate([y, *(v[1] for v in view_rows)])
    t0 = time.perf_counter()
    fit_quietly(head_name, head, X, y)
    fit_s = time.perf_counter() - t0
    metrics = {split: evaluate(head, fs[split].X, fs[split].y) for split in ("val", "test") if split in fs}
    for split, ids in (leaked or {}).items():
        if split in fs and ids:
            keep = ~np.isin(np.asarray(fs[split].ids, dtype=str), list(ids))
            metrics[f"{split}_without_leaked"] = evaluate(head, fs[split].X[keep], fs[split].y[keep])
    target = Path(out) if out else default_head_path(path, head_name)
    params = head_params(head)
    calibration = fit_calibration(head, fs)  # saved inside the head with it: one file, one rename
    head_path, card_path = save_head(head, target, head_name=head_name, params=params, metrics=metrics,
                                     fit_seconds=fit_s, n_train=len(y), fs=fs,
                                     extra={**({"calibration": calibration} if calibration else {}),
                                            **({"tuning": tuning} if tuning else {}),
                                            **({"views": [str(p) for p in view_paths]} if view_paths else {}),
                                            **(card or {})}
                                     or None)
    layers = getattr(head, "named_steps", {}).get("layers")  # --layers: the columns the head uses, not the cache's
    n_features = len(layers.columns) if layers is not None else int(X.shape[1])
    return FitResult(head_path, card_path, params, metrics, fit_s, len(y), n_features, len(fs.classes),
                     calibration)


def _fit_streaming(head_name: str, head, fs, *, out, tuning, card, memory_budget: int) -> FitResult:
    """:func:`fit_head` for a train split larger than the memory budget: streamed fit, val and test scored block by
    block; no views, no calibration (both would hold rows in memory), each said in the card."""
    from ..heads.streaming import fit_streaming, scores_blocks, train_bytes

    need = train_bytes(fs["train"])
    log.info(f"the train split ({need / 2**20:.0f} MiB of features) exceeds the memory budget "
             f"({memory_budget / 2**20:.0f} MiB): fitting {head_name} streaming, one pass over the split per L-BFGS "
             "evaluation")
    t0 = time.perf_counter()
    head, record = fit_streaming(head_name, head, fs["train"])
    fit_s = time.perf_counter() - t0
    results = {}
    for split in ("val", "test"):
        if split in fs:
            s, y = scores_blocks(head, fs[split])
            classes = head.classes_
            results[split] = metrics(classes, s, y, pred=classes[(s > 0).astype(int)] if s.ndim == 1 else None)
    target = Path(out) if out else default_head_path(fs.path, head_name)
    params = head_params(head)
    streaming = {**record, "train_bytes": need, "memory_budget": memory_budget, "seconds": round(fit_s, 2)}
    head_path, card_path = save_head(head, target, head_name=head_name, params=params, metrics=results,
                                     fit_seconds=fit_s, n_train=record["rows"], fs=fs,
                                     extra={"streaming": streaming,
                                            "calibration": {"skipped": "a streamed fit (train split over the memory "
                                                                       "budget) is not calibrated"},
                                            **({"tuning": tuning} if tuning else {}), **(card or {})})
    return FitResult(head_path, card_path, params, results, fit_s, record["rows"], int(fs.feature_dim),
                     len(fs.classes), {"skipped": "a streamed fit is not calibrated"})


def fit_calibration(head, fs, relabel=None) -> dict | None:
    """Temperature scaling of a head with decision scores, fitted on the cache's val split (which the head did
    not train on) when it can support it (:func:`featx.probe.calibration.guarded_temperature`):
    ``{"temperature", "fitted_on", "val_rows", "val_errors"}`` plus the test ECE before and after with their
    intervals, or ``{"skipped": why, ...}``; ``None`` when the head has no scores (k-NN) or the cache no labelled
    val rows of the head's classes. ``relabel`` maps the cache's labels to the head's (an updated head whose classes
    are matched by name)."""
    from .calibration import calibrate, decision_scores, ece_interval, expected_calibration_error, guarded_temperature

    relabel = relabel or (lambda y: y)

    def labelled(split):
        X, y = fs[split].labelled()
        return X, relabel(y)

    fitted = guarded_temperature(head, *labelled("val")) if "val" in fs else None
    if fitted is None:
        return None
    out = {**fitted, "fitted_on": "val"}
    if "temperature" in out:
        out["temperature"] = round(out["temperature"], 6)
    if "test" in fs:
        Xt, yt = labelled("test")
        if len(yt):
            s = decision_scores(head, Xt)
            before = head.predict_proba(Xt) if hasattr(head, "predict_proba") else softmax(s)
            out["test_ece"] = round(expected_calibration_error(before, yt, head.classes_)[0], 6)
            out["test_ece_ci"] = [round(v, 6) for v in ece_interval(before, yt, head.classes_)]
            if "temperature" in out:
                after = calibrate(s, out["temperature"])
                out["test_ece_calibrated"] = round(expected_calibration_error(after, yt, head.classes_)[0], 6)
                out["test_ece_calibrated_ci"] = [round(v, 6) for v in ece_interval(after, yt, head.classes_)]
    return out
