"""``featx grid`` as one library call: search every head on a cache, few-shot curves, the three reports."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..cache.store import open_features
from ..errors import FeatxError
from ..options import CV_FOLDS
from ..heads.registry import HEADS, clip_to_rows
from ..util import first_line, softmax
from ..version import __version__
from .evaluate import evaluate
from .report import write_reports
from .selection import edge_notes, one_se_choice, score_se
from .search import NYSTROEM_FEW_ROWS, few_shot, grid_points, search_head, select_layers

__all__ = ["GridOptions", "check_grids", "run_grid"]

log = logging.getLogger("featx")


def check_grids(fs, grids: dict, folds: int) -> tuple[dict, int, list[str]]:
    """The grids and CV folds this cache can hold, and a note for each change: row-bound values (k-NN's k,
    Nystroem landmarks) above the rows a fit sees are lowered to that number (duplicates dropped), and the
    folds of cross-validation (no val split) to the smallest class's count. Raises when no fit is possible."""
    y = fs["train"].labelled()[1]
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise FeatxError(f"{fs.path}: the train split has {len(classes)} labelled class; a search needs two")
    notes = []
    if "val" not in fs and counts.min() < folds:
        if counts.min() < 2:
            raise FeatxError(f"{fs.path}: no validation split, and class {fs.classes[classes[counts.argmin()]]!r} has "
                             "1 training item: cross-validation needs 2 per class (extract with a val split, or "
                             "more items)")
        notes.append(f"{folds}-fold CV needs {folds} training items per class; the smallest class has "
                     f"{counts.min()}: using {counts.min()} folds")
        folds = int(counts.min())
    rows = len(y) if "val" in fs else len(y) - -(-len(y) // folds)  # the rows one CV fit sees
    out = {}
    for h, grid in grids.items():
        out[h] = dict(grid)
        for key in HEADS[h].row_bound:
            values = grid.get(key, (None,))
            clipped = []
            for v in values:
                params, lowered = clip_to_rows(h, {key: v} if v is not None else {}, rows)
                if params.get(key, v) not in clipped:
                    clipped.append(params.get(key, v))
                notes += [f"grid {note.replace(f'{h}: ', f'{h} ', 1)}" for note in lowered]
            if clipped != list(values):
                out[h][key] = tuple(clipped)
    return out, folds, notes


@dataclass(frozen=True)
class GridOptions:
    """How ``featx grid`` searches (the protocol's settings; each has its ``featx grid`` flag of the same name).

    Attributes:
        metric: the selection score on val, a key of :data:`featx.options.METRICS`.
        jobs: parallel fits (joblib ``n_jobs``; -1 = all cores).
        folds: k of the stratified k-fold CV when the cache has no val split.
        class_weight: ``"balanced"`` for every head that supports it, or ``None``.
        shots: images per class of the best head's few-shot curve (empty: no curve).
        tries: random draws per few-shot point.
        layers: for a multi-layer cache: ``all`` columns, ``last`` or names (every head searches those), or
            ``search`` (every column, then greedy forward selection of layers for the chosen head).
        leaked_test: ids of test items that copy a train item (an audit of the cache): every head's test is also
            scored without them.
    """

    metric: str = "top1"
    jobs: int = -1
    folds: int = CV_FOLDS
    class_weight: str | None = None
    shots: tuple = ()
    tries: int = 5
    layers: str = "all"
    leaked_test: tuple = ()


def run_grid(cache, grids: dict, *, name: str, out_dir, options: GridOptions = GridOptions(),
             baselines: Callable[[str, dict], dict] | None = None, progress=None) -> tuple[dict, list[Path]]:
    """Search ``grids`` (head -> checked grid, :func:`featx.probe.search.parse_grid`) on ``cache``; write
    ``report.md``, ``report.html`` and ``results.json`` into ``out_dir``. Returns (results, written paths).

    ``baselines``: ``baselines(head, params)`` -> the best head's baseline record (the transfer family's
    :func:`featx.transfer.baselines.run_baselines` on this cache, bound by the caller); ``None`` skips them."""
    path = Path(cache)
    fs = open_features(path)
    for split in ("train", "test"):
        if split not in fs:
            raise FeatxError(f"{path} has no {split} split")
    t_all = time.perf_counter()
    grids, folds, notes = check_grids(fs, grids, options.folds)  # before any fit: clip what the data cannot hold
    for note in notes:
        log.info(f"note: {note}")
    options = dataclasses.replace(options, folds=folds)
    from ..heads.layers import layer_columns

    columns, _ = layer_columns(fs.meta, None if options.layers == "search" else options.layers)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NYSTROEM_FEW_ROWS)
        searched, failed = _search_all(fs, grids, options, progress, columns)
        choice = _choose(fs, searched)
        best_result = next(r for r, _ in searched if r.head == choice["chosen"])
        for r, _ in searched:
            for note in edge_notes(r.head, r.grid, r.best_params):
                log.warning(f"warning: {note}")
                notes.append(note)
        layers = _layer_search(fs, best_result, options) if options.layers == "search" else None
        curves = {}
        if options.shots:
            curves[best_result.head] = few_shot(best_result.head, best_result.best_params, fs,
                                                shots=list(options.shots), tries=options.tries)
    baseline = _baselines(fs, best_result, baselines) if baselines is not None else None
    total = time.perf_counter() - t_all
    results = {
        "pipeline": name, "cache": str(path), "cache_key": fs.cache_key, "backbone": fs.meta.get("backbone"),
        "weights": fs.meta.get("weights"), "precision": fs.meta.get("precision"),
        "feature_dim": fs.meta.get("feature_dim"), "classes": list(fs.classes),
        "sizes": {s: len(fs[s]) for s in fs.splits}, "metric": options.metric,
        "selection": searched[0][0].selection, "featx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "total_seconds": round(total, 2), "class_weight": options.class_weight,
        "heads": [dict(r.as_dict(), search_seconds=round(sec, 2)) for r, sec in searched],
        "failed": failed, "notes": notes, "choice": choice,
        "few_shot": curves,
        **({"layers": layers} if layers else {}),
        **({"baselines": baseline} if baseline is not None else {}),
        **({"transfer": baseline["transfer"]} if baseline and "transfer" in baseline else {}),
    }
    paths = write_reports(out_dir, results, _best_arrays(best_result, fs))
    return results, paths


def _choose(fs, searched) -> dict:
    """The best head by the one-standard-error rule over the heads' validation scores (:mod:`.selection`)."""
    choice = one_se_choice({r.head: r.best_score for r, _ in searched}, _selection_rows(fs))
    if len(choice["tied"]) > 1:
        log.info(f"note: {', '.join(choice['tied'])} are within one standard error ({choice['se']:.4f}) of the best "
                 f"validation score {choice['highest_score']:.4f}: the data cannot tell them apart; chose "
                 f"{choice['chosen']}, the simplest (one-standard-error rule)")
    return choice


def _selection_rows(fs) -> int:
    """How many rows a validation score is measured on: the val split's labelled rows, else (cross-validation)
    the train split's."""
    return len(fs["val"].labelled()[1]) if "val" in fs else len(fs["train"].labelled()[1])


def _layer_search(fs, best, options: GridOptions) -> dict | None:
    """``--layers search``: greedy forward selection of layers for the chosen head at its best point, then that head
    searched again on the selected layers (val score and test, beside the all-layer result)."""
    if not fs.meta.get("layer_parts"):
        log.info("note: --layers search: this cache holds one layer; nothing to select")
        return None
    picked = select_layers(best.head, best.best_params, fs, metric=options.metric, folds=options.folds,
                           jobs=options.jobs)
    from ..heads.layers import layer_columns

    columns, _ = layer_columns(fs.meta, ",".join(picked["chosen"]))
    again = search_head(best.head, fs, grid=None, metric=options.metric, jobs=options.jobs, folds=options.folds,
                        class_weight=options.class_weight, columns=columns)
    se = score_se(max(again.best_score, best.best_score), _selection_rows(fs))
    gain = again.best_score - best.best_score
    verdict = "better" if gain > se else "worse" if gain < -se else "can't tell"
    log.info(f"layers for {best.head}: {', '.join(picked['chosen'])} (val {again.best_score:.4f} against "
             f"{best.best_score:.4f} with every layer: {verdict}, one standard error {se:.4f}; test top1 "
             f"{again.test.get('top1', float('nan')):.4f} against {best.test.get('top1', float('nan')):.4f}); "
             f"`featx fit --layers {','.join(picked['chosen'])}` uses them")
    return {**picked, "head": best.head, "val_score": again.best_score, "best_params": again.best_params,
            "test": again.test, "all_layers": {"val_score": best.best_score, "test": best.test},
            "against_all": {"gain": round(gain, 4), "se": round(se, 4), "verdict": verdict,
                            "rule": "the selected layers' val score against every layer's: better or worse beyond one "
                                    "standard error of a proportion on the selection rows, else can't tell"}}


def _search_all(fs, grids: dict, options: GridOptions, progress, columns=None) -> tuple[list, list]:
    """Every head's search, in order: ``[(HeadSearch, seconds)]`` and ``[{"head", "error"}]`` for the heads that
    failed (one head's failure loses no other; all failing is an error)."""
    per_point = 1 if "val" in fs else options.folds
    total_fits = sum(len(grid_points(g)) * per_point for g in grids.values())
    done_fits = 0
    searched, failed = [], []
    for h, grid in grids.items():
        t0 = time.perf_counter()
        log.info(f"searching {h}: {len(grid_points(grid))} points ...")
        if progress:
            progress(done_fits, total_fits, f"grid {h}")
        try:
            result = search_head(h, fs, grid=grid, metric=options.metric, jobs=options.jobs, folds=options.folds,
                                 class_weight=options.class_weight, columns=columns)
        except (FeatxError, ValueError, RuntimeError, MemoryError) as exc:
            failed.append({"head": h, "error": f"{type(exc).__name__}: {first_line(exc)}"
                           if not isinstance(exc, FeatxError) else first_line(exc)})
            log.warning(f"warning: {h} failed ({failed[-1]['error']}); the report marks it failed")
            continue
        finally:
            done_fits += len(grid_points(grid)) * per_point
            if progress:
                progress(done_fits, total_fits, f"grid {h}")
        if options.leaked_test and "test" in fs and result.estimator is not None:
            keep = ~np.isin(np.asarray(fs["test"].ids, dtype=str), list(options.leaked_test))
            result.test_without_leaked = evaluate(result.estimator, fs["test"].X[keep], fs["test"].y[keep])
        searched.append((result, time.perf_counter() - t0))
        log.info(f"{h}: best {result.best_params} val {options.metric} {result.best_score:.4f}; "
                 f"test top1 {result.test.get('top1', float('nan')):.4f} ({searched[-1][1]:.1f} s)")
    if not searched:
        raise FeatxError(f"every head failed; first: {failed[0]['head']}: {failed[0]['error']}")
    return searched, failed


def _baselines(fs, best, baselines) -> dict:
    try:
        b = baselines(best.head, best.best_params)
    except FeatxError as exc:
        log.info(f"note: baselines skipped: {exc}")
        return {"skipped": str(exc)}
    from .verdict import verdict_line

    log.info(f"baselines of {best.head} ({b['n_train']} train / {b['n_test']} test items, each feature set tuned on "
             f"its own): pretrained {b['pretrained']:.4f}, random-init {b['random_init']:.4f}, raw pixels "
             f"{b['raw_pixels']:.4f}; {verdict_line(b['transfer'])}")
    if b.get("warning"):
        log.warning(b["warning"])
    return b


#: Test points on the grid report's embedding map (a seeded sample).
MAP_POINTS = 2000


def _test_map(X, y, pred, seed: int = 0) -> dict:
    """A seeded sample of at most :data:`MAP_POINTS` test rows projected to 2-D (``featx map``'s projection), with
    their labels and the best head's predictions."""
    from ..report.projection import project_2d

    rows = np.sort(np.random.default_rng(seed).choice(len(y), size=min(MAP_POINTS, len(y)), replace=False))
    xy, method = project_2d(X[rows], seed)
    return {"xy": xy, "y": y[rows], "pred": pred[rows], "method": method, "n_rows": len(y)}


def _best_arrays(result, fs) -> dict:
    """Test labels, predictions and probabilities of the best head, for the report's plots: its own
    probabilities (or the softmax of its decision scores), and, for a head with decision scores and a cache with
    a val split, the temperature-scaled ones (T fitted on val with the best point refitted on train alone, so
    that val is held out; then applied to the final head's test scores)."""
    from ..heads.registry import make_head
    from .calibration import calibrate, decision_scores, guarded_temperature
    from .evaluate import scores
    from .fitting import fit_quietly

    X, y = fs["test"].labelled()
    est = result.estimator
    s = scores(est, X)
    kind = "predicted probabilities"
    if not hasattr(est, "predict_proba"):
        s = softmax(s)
        kind = "softmax of decision scores (this head has no probabilities)"
    out = {"head": result.head, "classes": est.classes_, "y": y, "pred": est.classes_[s.argmax(axis=1)],
           "proba": s, "proba_kind": kind}
    out["map"] = _test_map(X, y, out["pred"])
    test_scores = decision_scores(est, X)
    if test_scores is not None and "val" in fs:
        Xtr, ytr = fs["train"].labelled()
        Xv, yv = fs["val"].labelled()
        held_out = fit_quietly(result.head, make_head(result.head, result.best_params), Xtr, ytr)
        fitted = guarded_temperature(held_out, Xv, yv)
        if fitted is not None and "temperature" in fitted:
            out.update(temperature=fitted["temperature"],
                       proba_calibrated=calibrate(test_scores, fitted["temperature"]))
        elif fitted is not None:
            out["calibration_skipped"] = fitted["skipped"]
    return out
