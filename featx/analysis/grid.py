"""``featx grid`` as one library call: search every head on a cache, few-shot curves, the three reports."""

from __future__ import annotations

import datetime as _dt
import logging
import time
import warnings
from pathlib import Path

from ..cache.store import open_features
from ..errors import FeatxError
from ..heads.registry import NYSTROEM_COMPONENTS
from ..util import softmax
from ..version import __version__
from .report import write_reports
from .search import NYSTROEM_FEW_ROWS, few_shot, grid_points, search_head

__all__ = ["run_grid"]

log = logging.getLogger("featx")


def run_grid(cache, grids: dict, *, name: str, out_dir, metric: str = "top1", jobs: int = -1, folds: int = 5,
             class_weight: str | None = None, shots=(), tries: int = 5,
             baselines: dict | None = None) -> tuple[dict, list[Path]]:
    """Search ``grids`` (head -> checked grid, :func:`featx.analysis.search.parse_grid`) on ``cache``; write
    ``report.md``, ``report.html`` and ``results.json`` into ``out_dir``. Returns (results, written paths).

    ``baselines``: keyword arguments of :func:`featx.analysis.baselines.run_baselines` (``cache_dir``, ``root``)
    to fit the best head on random-init features and raw pixels too; ``None`` skips them."""
    path = Path(cache)
    fs = open_features(path)
    for split in ("train", "test"):
        if split not in fs:
            raise FeatxError(f"{path} has no {split} split")
    t_all = time.perf_counter()
    searched = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NYSTROEM_FEW_ROWS)  # landmarks = rows: reported below
        for h, grid in grids.items():
            t0 = time.perf_counter()
            log.info(f"searching {h}: {len(grid_points(grid))} points ...")
            result = search_head(h, fs, grid=grid, metric=metric, jobs=jobs, folds=folds, class_weight=class_weight)
            searched.append((result, time.perf_counter() - t0))
            log.info(f"{h}: best {result.best_params} val {metric} {result.best_score:.4f}; "
                     f"test top1 {result.test.get('top1', float('nan')):.4f} ({searched[-1][1]:.1f} s)")
        n_train = len(fs["train"].labelled()[1])
        if "rbf-svm" in grids:
            landmarks = max(p.get("kmap__n_components", NYSTROEM_COMPONENTS) for p in grid_points(grids["rbf-svm"]))
            if n_train < landmarks:
                log.info(f"note: rbf-svm has only {n_train} training rows, so its Nystroem map used {n_train} "
                         f"landmarks, not {landmarks}")
        best_result = max(searched, key=lambda r: r[0].best_score)[0]
        curves = {}
        if shots:
            curves[best_result.head] = few_shot(best_result.head, best_result.best_params, fs, shots=list(shots),
                                                tries=tries)
    baseline = _baselines(fs, best_result, baselines) if baselines is not None else None
    total = time.perf_counter() - t_all
    results = {
        "pipeline": name, "cache": str(path), "cache_key": fs.cache_key, "backbone": fs.meta.get("backbone"),
        "weights": fs.meta.get("weights"), "precision": fs.meta.get("precision"),
        "feature_dim": fs.meta.get("feature_dim"), "classes": list(fs.classes),
        "sizes": {s: len(fs[s]) for s in fs.splits}, "metric": metric,
        "selection": searched[0][0].selection, "featx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "total_seconds": round(total, 2), "class_weight": class_weight,
        "heads": [dict(r.as_dict(), search_seconds=round(sec, 2)) for r, sec in searched],
        "few_shot": curves,
        **({"baselines": baseline} if baseline is not None else {}),
    }
    paths = write_reports(out_dir, results, _best_arrays(best_result, fs))
    return results, paths


def _baselines(fs, best, kwargs: dict) -> dict:
    from .baselines import baseline_warning, run_baselines

    try:
        b = run_baselines(fs, best.head, best.best_params, **kwargs)
    except FeatxError as exc:
        log.info(f"note: baselines skipped: {exc}")
        return {"skipped": str(exc)}
    log.info(f"baselines of {best.head}: pretrained {b['pretrained']:.4f}, random-init {b['random_init']:.4f}, "
             f"raw pixels {b['raw_pixels']:.4f}; transfer gain {b['transfer_gain']:+.4f} ± {b['transfer_gain_se']:.4f}")
    warning = baseline_warning(b)
    if warning:
        log.warning(warning)
    return b


def _best_arrays(result, fs) -> dict:
    """Test labels, predictions and probabilities of the best head, for the report's plots."""
    from .evaluate import scores

    X, y = fs["test"].labelled()
    est = result.estimator
    s = scores(est, X)
    kind = "predicted probabilities"
    if not hasattr(est, "predict_proba"):
        s = softmax(s)
        kind = "softmax of decision scores (this head has no probabilities)"
    return {"head": result.head, "classes": est.classes_, "y": y, "pred": est.classes_[s.argmax(axis=1)],
            "proba": s, "proba_kind": kind}
