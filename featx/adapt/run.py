"""``featx adapt``: a head for a target domain, trained on a labelled source cache after aligning the domains
with the target cache's unlabelled features; every method compared in one report.

Protocol. Source rows: the source cache's labelled ``train`` split. Target rows for fitting the map: the target
cache's ``train`` and ``val`` splits, labels ignored (all of its rows when it has no ``test`` split). Target
accuracy: on the target's labelled ``test`` rows (else every labelled target row not used for training) --
target labels are never used for anything else, except ``--target-shots K``: K labelled target ``train`` rows
per class added to the training set (mapped as target rows). Reported per method: target accuracy against
source-only (``none``) and against the ceiling (the same head trained on the target's labelled ``train`` rows,
when it has them), with the gain's 95% paired-bootstrap interval on the same scored items and a verdict (helps /
hurts / inconclusive, :mod:`featx.probe.verdict`), and the proxy A-distance (Ben-David et al. 2007: ``2 (1 - 2
err)`` of a domain classifier, logistic regression, 2-fold CV) between source and target features before and after
the map. The best method is the simplest (in the order none, standardize, coral, subspace) within one standard error
of the highest target accuracy (:mod:`featx.probe.selection`): with few scored items, several are tied.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time

import numpy as np

from ..cache.spec import EmbeddingSpec
from ..cache.store import open_features
from ..errors import FeatxUsageError
from .maps import METHODS, AdaptedHead, make_map
from ..heads.registry import head_params, make_head
from ..version import __version__
from ..probe.evaluate import evaluate
from ..probe.fitting import fit_quietly
from ..probe.selection import one_se_choice
from ..probe.verdict import paired_gain

__all__ = ["adaptation_card", "check_compatible", "proxy_a_distance", "run_adaptation", "save_adapted_heads"]

log = logging.getLogger("featx")

#: Rows per domain the proxy A-distance's domain classifier sees (a stratified-free random sample).
PAD_ROWS = 2000


def check_compatible(source, target) -> None:
    """One-line usage error when the two caches' features are not the same features (one
    :class:`~featx.cache.spec.EmbeddingSpec`: backbone, weights, layer, transform, precision, decoder, size)."""
    mine, theirs = EmbeddingSpec.from_attrs(source.meta), EmbeddingSpec.from_attrs(target.meta)
    if not mine.same_features(theirs):
        raise FeatxUsageError(f"{source.path} and {target.path} hold different features "
                              f"({mine.difference(theirs, mine='source', theirs='target')}): extract both with the "
                              "same backbone, weights, transform and precision")


def _target_labels(source, target, y: np.ndarray) -> np.ndarray:
    """Target labels as indices into the source's classes (matched by name); -1 stays -1."""
    if not (y >= 0).any():
        return y
    missing = sorted({target.classes[i] for i in np.unique(y[y >= 0])} - set(source.classes))
    if missing:
        raise FeatxUsageError(f"{target.path} has classes the source does not ({', '.join(missing[:5])}"
                              f"{', ...' if len(missing) > 5 else ''}): class lists must match by name (a target "
                              "without labels is fine)")
    index = {name: i for i, name in enumerate(source.classes)}
    lookup = np.array([index[name] for name in target.classes], dtype=np.int64)
    return np.where(y >= 0, lookup[np.maximum(y, 0)], -1)


def proxy_a_distance(Xs: np.ndarray, Xt: np.ndarray, seed: int = 0) -> float:
    """``2 (1 - 2 err)`` of a logistic-regression domain classifier (2-fold CV), clipped to [0, 2]."""
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(seed)
    a = Xs[rng.permutation(len(Xs))[:PAD_ROWS]]
    b = Xt[rng.permutation(len(Xt))[:PAD_ROWS]]
    X = np.vstack([a, b]).astype(np.float32)
    d = np.concatenate([np.zeros(len(a), np.int64), np.ones(len(b), np.int64)])
    acc = float(cross_val_score(make_head("logreg"), X, d, cv=2).mean())
    return float(np.clip(2 * (1 - 2 * (1 - acc)), 0.0, 2.0))


def _rows(fs, splits):
    parts = [(fs[s].X, fs[s].y) for s in splits if s in fs]
    if not parts:
        return np.zeros((0, int(fs.meta["feature_dim"])), np.float32), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def run_adaptation(source_path, target_path, *, head: str, params: dict | None = None, methods=("all",),
                   target_shots: int = 0, components: int = 64, seed: int = 0) -> tuple[dict, dict]:
    """Fit ``head`` on the source with each method; returns (the results record, method -> fitted AdaptedHead)."""
    source, target = open_features(source_path), open_features(target_path)
    check_compatible(source, target)
    if "train" not in source:
        raise FeatxUsageError(f"{source.path} has no train split to learn from")
    methods = list(METHODS) if "all" in methods else list(dict.fromkeys(["none", *methods]))
    Xs, ys = source["train"].labelled()
    has_test = "test" in target
    Xt_fit, yt_fit = _rows(target, ("train", "val") if has_test else target.splits)
    yt_fit = _target_labels(source, target, yt_fit)
    if has_test:
        Xt_eval, yt_eval = target["test"].X, _target_labels(source, target, target["test"].y)
    else:
        Xt_eval, yt_eval = Xt_fit, yt_fit
    shots_idx, Xt_eval, yt_eval = _shots(target, yt_fit, Xt_eval, yt_eval, target_shots, seed, scored_apart=has_test)
    scored = yt_eval >= 0
    n_components = int(min(components, Xs.shape[1], len(Xs), len(Xt_fit)))
    pad_before = proxy_a_distance(Xs, Xt_fit, seed)
    results, heads = [], {}
    for method in methods:
        row, heads[method] = _fit_method(method, head, params, (Xs, ys), (Xt_fit, yt_fit, shots_idx),
                                         (Xt_eval[scored], yt_eval[scored]), n_components=n_components, seed=seed)
        results.append(row)
    base = next(r for r in results if r["method"] == "none")
    base_correct = base.get("_correct")
    for r in results:  # each method against source-only on the same scored items: a paired interval
        if "target" in r:
            g = paired_gain(r.pop("_correct"), base_correct, seed=seed)
            r["gain_over_source_only"] = g["gain"]
            r["gain_ci"] = [g["ci_low"], g["ci_high"]]
            r["verdict"] = ("helps" if g["ci_low"] > 0 else "hurts" if g["ci_high"] < 0 else
                            "inconclusive") if r["method"] != "none" else "reference"
            r["worse_than_source_only"] = r["verdict"] == "hurts"
    ceiling = None
    if "train" in target and has_test and scored.any():
        Xc, yc = target["train"].X, _target_labels(source, target, target["train"].y)
        if (yc >= 0).sum() and len(np.unique(yc[yc >= 0])) > 1:
            est = fit_quietly(head, make_head(head, params), Xc[yc >= 0], yc[yc >= 0])
            ceiling = evaluate(est, Xt_eval[scored], yt_eval[scored])
    record = {
        "source": {"cache": str(source.path), "cache_key": source.cache_key, "rows": len(ys)},
        "target": {"cache": str(target.path), "cache_key": target.cache_key, "rows_for_the_map": len(Xt_fit),
                   "rows_scored": int(scored.sum()), "labelled": bool(scored.any())},
        "head": head, "params": head_params(make_head(head, params)), "target_shots": int(target_shots),
        "subspace_components": n_components, "backbone": source.meta.get("backbone"),
        "weights": source.meta.get("weights"), "classes": list(source.classes),
        "proxy_a_distance_before": round(pad_before, 4), "methods": results, "ceiling": ceiling,
        "featx_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    scored_rows = [r for r in results if "target" in r]
    if scored_rows:  # the simplest method within one standard error of the best target accuracy
        choice = one_se_choice({r["method"]: r["target"]["top1"] for r in scored_rows}, int(scored.sum()),
                               order=tuple(METHODS))
        record["choice"] = choice
        record["best_method"] = choice["chosen"]
    return record, heads


def _shots(target, yt_fit, Xt_eval, yt_eval, target_shots: int, seed: int, *, scored_apart: bool):
    """``target_shots`` labelled target rows per class drawn for training (their indices in the rows for the map),
    and the rows scored (without the shots when the target has no test split of its own)."""
    shots_idx = np.zeros(0, np.int64)
    if not target_shots:
        return shots_idx, Xt_eval, yt_eval
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(yt_fit >= 0)
    if not len(labelled):
        raise FeatxUsageError(f"{target_shots}: {target.path} has no labelled rows to take them from",
                              param="target_shots")
    shots_idx = np.concatenate([rng.permutation(labelled[yt_fit[labelled] == c])[:target_shots]
                                for c in np.unique(yt_fit[labelled])])
    if not scored_apart:  # the shots are training rows: not scored
        keep = np.setdiff1d(np.arange(len(yt_eval)), shots_idx)
        Xt_eval, yt_eval = Xt_eval[keep], yt_eval[keep]
    return shots_idx, Xt_eval, yt_eval


def _fit_method(method: str, head: str, params, source, target_fit, target_eval, *, n_components: int, seed: int):
    """One method: its map fitted on source + target rows, the head on the mapped source (and the target rows
    ``shots_idx`` of ``target_fit``); its row of the record (target accuracy when ``target_eval`` has rows, proxy
    A-distance after the map) and the head."""
    (Xs, ys), (Xt_fit, yt_fit, shots_idx), (Xe, ye) = source, target_fit, target_eval
    t0 = time.perf_counter()
    dmap = make_map(method, n_components=n_components)
    Ms, Mt = dmap.fit_map(Xs, Xt_fit)
    X_train, y_train = Ms, ys
    if len(shots_idx):
        X_train = np.vstack([Ms, Mt[shots_idx]])
        y_train = np.concatenate([ys, yt_fit[shots_idx]])
    adapted = AdaptedHead(dmap, fit_quietly(head, make_head(head, params), X_train, y_train))
    row = {"method": method, "description": METHODS[method], "seconds": round(time.perf_counter() - t0, 3),
           "proxy_a_distance": round(proxy_a_distance(Ms, Mt, seed), 4)}
    if len(ye):
        row["target"] = evaluate(adapted, Xe, ye)
        row["_correct"] = adapted.predict(Xe) == ye
    log.info(f"{method}: {row.get('target', {}).get('top1', float('nan')):.4f} target top-1, "
             f"PAD {row['proxy_a_distance']:.3f} ({row['seconds']:.1f} s)")
    return row, adapted


def save_adapted_heads(record: dict, heads: dict, out_dir) -> list:
    """Each method's adapted head saved as ``<out_dir>/<method>.skops`` with its card, which records the
    adaptation (:func:`adaptation_card`; ``featx predict`` applies the map). Returns the head paths."""
    from pathlib import Path

    from ..heads.persist import save_head

    source = open_features(record["source"]["cache"])
    paths = []
    for method, adapted in heads.items():
        row = next(r for r in record["methods"] if r["method"] == method)
        head_path, _ = save_head(adapted, Path(out_dir) / f"{method}.skops", head_name=record["head"],
                                 params=record["params"], metrics={"target": row.get("target", {})},
                                 fit_seconds=row["seconds"], n_train=record["source"]["rows"], fs=source,
                                 extra={"adaptation": adaptation_card(record, method, adapted)})
        paths.append(head_path)
    return paths


def adaptation_card(record: dict, method: str, adapted: AdaptedHead) -> dict:
    """What a saved adapted head's card records about its adaptation."""
    fitted = {k: (v.tolist() if isinstance(v, np.ndarray) and v.size <= 16 else
                  f"array {list(v.shape)}" if isinstance(v, np.ndarray) else v)
              for k, v in vars(adapted.domain_map).items() if k.endswith("_")}
    row = next(r for r in record["methods"] if r["method"] == method)
    return {"method": method, "description": METHODS[method], "source_cache_key": record["source"]["cache_key"],
            "target_cache_key": record["target"]["cache_key"], "target_cache": record["target"]["cache"],
            "fitted": fitted, "target_top1": row.get("target", {}).get("top1"),
            "proxy_a_distance": row["proxy_a_distance"]}

