"""``featx rank``: which backbone, and does pretraining help here at all -- from a sample, before any full run.

Protocol: a stratified sample of the labelled train items (default 2,000) is extracted with every candidate
(cached like any extraction: a second rank reuses it); each candidate is scored on its sample features by
LogME, by the cross-validated accuracy of the ``logreg`` head (its ``C`` tuned inside each fold) and by a k-NN
probe. Two baselines are scored the same way on the same items: the first candidate's architecture with seeded
random weights, and raw pixels (32x32 RGB, flattened; the head standardises them). Each candidate's transfer
verdict (helps / hurts / inconclusive, with its interval) is the protocol of :mod:`featx.probe.verdict` on the
out-of-fold predictions, the one ``featx fit`` and ``featx grid`` use on a test split. Candidates are ranked by
LogME, best first.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time

import numpy as np

from ..options import CV_FOLDS, RANK_SAMPLE
from ..version import __version__
from .estimators import knn_accuracy, logme

__all__ = ["RAW_PIXELS_SIZE", "rank_backbones", "raw_pixels"]

log = logging.getLogger("featx")

#: Side of the raw-pixel baseline's images.
RAW_PIXELS_SIZE = 32


def raw_pixels(source, size: int = RAW_PIXELS_SIZE, *, split: str = "train") -> tuple[np.ndarray, np.ndarray, list]:
    """The items of one split of ``source`` as flattened ``size`` x ``size`` RGB pixels in [0, 1] (unreadable
    ones dropped), their labels and their ids."""
    from PIL import Image

    from ..data.decoding import to_rgb

    items = source.splits()[split]
    rows, labels, ids = [], [], []
    for key, item_id, label in zip(items.keys, items.ids, items.labels):
        try:
            img = to_rgb(source.open(key)).resize((size, size), Image.Resampling.BILINEAR)
        except Exception:  # unreadable: the extraction records it; the baseline just leaves it out
            continue
        rows.append(np.asarray(img, dtype=np.float32).reshape(-1) / 255.0)
        labels.append(int(label))
        ids.append(str(item_id))
    return np.stack(rows), np.asarray(labels), ids


#: A sample at least this share of the train items costs about as much as extracting everything: said.
LARGE_SAMPLE_SHARE = 0.5


def _aligned(sets: dict) -> tuple[dict, tuple]:
    """``name -> (X, y, ids)`` restricted to the ids every set has, in one order (an unreadable item is missing
    from the pixels, a skipped one from a cache): the verdict pairs items. Also that order of ids."""
    common = set.intersection(*(set(ids) for _, _, ids in sets.values()))
    order = tuple(i for i in next(iter(sets.values()))[2] if i in common)
    out = {}
    for name, (X, y, ids) in sets.items():
        where = dict(zip(ids, range(len(ids))))
        rows = [where[i] for i in order]
        out[name] = (X[rows], np.asarray(y)[rows])
    return out, order


def _scores(X: np.ndarray, y: np.ndarray, scored: dict, folds: int, seed: int) -> dict:
    """LogME, the tuned logreg probe's out-of-fold top-1 (``scored``: :func:`featx.probe.verdict.score_sets`' entry
    for these features) and the k-NN probe's."""
    return {"logme": logme(X, y), "probe_top1": round(float(scored["correct"].mean()), 4),
            "knn_top1": round(knn_accuracy(X, y, folds=folds, seed=seed), 4)}


def _architecture(spec: str) -> str:
    """A candidate's architecture without its weights (``resnet50:IMAGENET1K_V2`` -> ``resnet50``,
    ``clip:ViT-B-32/openai`` -> ``clip:ViT-B-32``; a timm name stays whole)."""
    if spec.startswith("clip:"):
        return spec.partition("/")[0]
    return spec if spec.startswith("timm:") else spec.partition(":")[0]


def _zeroshot_top1(meta: dict, class_names: list[str], X: np.ndarray, y: np.ndarray, device: str) -> float | None:
    """A candidate with a text tower (``clip:``): the zero-shot head's top-1 on every sampled item (it trains on
    none; CLIP's ImageNet templates); ``None`` for the others."""
    from ..heads.registry import make_head
    from ..heads.zeroshot import has_text_tower, read_templates, zeroshot_params

    if not has_text_tower(meta) or not len(y):
        return None
    head = make_head("zeroshot", zeroshot_params(meta, class_names, read_templates(None), device=device)).fit(X[:1])
    return round(float((head.predict(X) == y).mean()), 4)


def rank_backbones(source, candidates: list[tuple[str, str | None]], *, sample: int = RANK_SAMPLE, seed: int = 0,
                   folds: int = CV_FOLDS, cache_dir="cache", device: str = "cpu", progress=None) -> dict:
    """Score every ``(backbone, weights)`` candidate and the two baselines on one sample of ``source``.

    Returns the ``rank.json`` record: ``candidates`` (ranked by LogME, best first; each with ``backbone``,
    ``weights``, ``scores`` (LogME, the tuned logreg probe's and the k-NN probe's cross-validated top-1),
    ``probe_top1``, ``zeroshot_top1`` (where the candidate has a text tower: the zero-shot head on every sampled
    item), ``transfer`` (the verdict of :mod:`featx.probe.verdict` against the baselines, on
    out-of-fold predictions of the same items), ``cache``), ``baselines`` (``random_init``, ``raw_pixels`` probe
    accuracies), ``predicted_best``, sizes, times, ``warnings``.
    """
    from ..backbones.registry import load_backbone
    from ..cache.store import open_features
    from ..extract import extract
    from ..probe.verdict import score_sets, verdict_of

    t_all = time.perf_counter()
    part = source.sampled(sample, seed=seed)
    n = len(part.splits()["train"])
    n_all = len(source.splits()["train"])
    warnings = []
    if n_all and n / n_all >= LARGE_SAMPLE_SHARE:
        warnings.append(f"the sample is {n} of the {n_all} train items ({n / n_all:.0%}): ranking costs about as much "
                        "as extracting every candidate on all of them (then `featx grid` on each cache answers "
                        "directly)")

    def features(spec: str, weights: str | None):
        bb = load_backbone(spec, weights, device=device)
        result = extract(part, bb, cache_dir=cache_dir, device=device, progress=progress)
        log.info(f"{'reused' if result.reused else 'extracted'} {bb.name} {bb.weights} on {n} sampled items: "
                 f"{result.path}")
        view = open_features(result.path)["train"]
        keep = view.y >= 0
        return bb, result, view.X[keep], view.y[keep], [str(i) for i in view.ids[keep]]

    arch = candidates[0][0]
    _, _, Xr, yr, idr = features(arch, "none")
    Xp, yp, idp = raw_pixels(part)
    rows, baselines = [], {}  # baselines: the aligned items -> their sets and scores (usually one entry)
    for spec, weights in candidates:
        t0 = time.perf_counter()
        bb, result, X, y, ids = features(spec, weights)
        sets, order = _aligned({"pretrained": (X, y, ids), "random_init": (Xr, yr, idr), "raw_pixels": (Xp, yp, idp)})
        scored = score_sets("logreg", {}, {"pretrained": sets["pretrained"]}, folds=folds, seed=seed)
        scores = _scores(*sets["pretrained"], scored["pretrained"], folds, seed)
        row = {"backbone": bb.name, "weights": bb.weights, "scores": scores, "probe_top1": scores["probe_top1"],
               "feature_dim": bb.feature_dim, "cache": str(result.path), "reused": result.reused,
               "seconds": round(time.perf_counter() - t0, 2)}
        if order not in baselines:  # the baselines of these very items, scored once
            baselines[order] = (sets, score_sets("logreg", {}, {k: sets[k] for k in ("random_init", "raw_pixels")},
                                                 folds=folds, seed=seed))
        row["transfer"] = verdict_of({**scored, **baselines[order][1]}, "logreg", folds=folds, seed=seed)
        zeroshot = _zeroshot_top1(open_features(result.path).meta, list(part.classes), X, y, device)
        if zeroshot is not None:
            row["zeroshot_top1"] = zeroshot
        rows.append(row)
    sets, base = next(iter(baselines.values()))
    random_init = _scores(*sets["random_init"], base["random_init"], folds, seed)
    pixels = _scores(*sets["raw_pixels"], base["raw_pixels"], folds, seed)
    rows.sort(key=lambda r: r["scores"]["logme"], reverse=True)
    return {
        "source": part.describe(), "sample": part.sample, "n_sampled": n, "n_train_items": n_all,
        "classes": list(part.classes), "folds": folds, "candidates": rows,
        "predicted_best": {"backbone": rows[0]["backbone"], "weights": rows[0]["weights"]},
        "baselines": {"random_init": random_init["probe_top1"], "raw_pixels": pixels["probe_top1"],
                      "random_init_backbone": _architecture(arch), "random_init_scores": random_init,
                      "raw_pixels_scores": pixels, "raw_pixels_size": RAW_PIXELS_SIZE},
        "warnings": warnings,
        "featx_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "total_seconds": round(time.perf_counter() - t_all, 2),
    }
