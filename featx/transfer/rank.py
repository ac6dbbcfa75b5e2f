"""``featx rank``: which backbone, and does pretraining help here at all -- from a sample, before any full run.

Protocol: a stratified sample of the labelled train items (default 2,000) is extracted with every candidate
(cached like any extraction: a second rank reuses it); each candidate is scored on its sample features by
LogME and by the cross-validated accuracy of the ``logreg`` head (:mod:`featx.transfer.estimators`). Two
baselines are scored the same way on the same items: the first candidate's architecture with seeded random
weights, and raw pixels (32x32 RGB, flattened; the head standardises them). A candidate whose probe accuracy
is not above the best baseline's is flagged ``negative_transfer``: its pretraining does not help on this data.
Candidates are ranked by LogME, best first.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time

import numpy as np

from ..options import CV_FOLDS, RANK_SAMPLE
from ..version import __version__
from .estimators import gain_se, logme, probe_accuracy

__all__ = ["RAW_PIXELS_SIZE", "rank_backbones", "raw_pixels"]

log = logging.getLogger("featx")

#: Side of the raw-pixel baseline's images.
RAW_PIXELS_SIZE = 32


def raw_pixels(source, size: int = RAW_PIXELS_SIZE, *, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The items of one split of ``source`` as flattened ``size`` x ``size`` RGB pixels in [0, 1] (unreadable
    ones dropped), and their labels."""
    from PIL import Image

    from ..data.decoding import to_rgb

    items = source.splits()[split]
    rows, labels = [], []
    for key, label in zip(items.keys, items.labels):
        try:
            img = to_rgb(source.open(key)).resize((size, size), Image.Resampling.BILINEAR)
        except Exception:  # unreadable: the extraction records it; the baseline just leaves it out
            continue
        rows.append(np.asarray(img, dtype=np.float32).reshape(-1) / 255.0)
        labels.append(int(label))
    return np.stack(rows), np.asarray(labels)


def _scores(X: np.ndarray, y: np.ndarray, folds: int) -> dict:
    t0 = time.perf_counter()
    out = {"logme": logme(X, y), "probe_top1": probe_accuracy(X, y, folds=folds)}
    out["score_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def rank_backbones(source, candidates: list[tuple[str, str | None]], *, sample: int = RANK_SAMPLE, seed: int = 0,
                   folds: int = CV_FOLDS, cache_dir="cache", device: str = "cpu", progress=None) -> dict:
    """Score every ``(backbone, weights)`` candidate and the two baselines on one sample of ``source``.

    Returns the ``rank.json`` record: ``candidates`` (ranked by LogME, best first; each with ``backbone``,
    ``weights``, ``scores``, ``probe_top1``, ``negative_transfer``, ``transfer_gain`` and its standard error,
    ``cache``), ``baselines`` (``random_init``, ``raw_pixels`` probe accuracies), ``predicted_best``, sizes, times.
    """
    from ..backbones.registry import load_backbone
    from ..cache.store import open_features
    from ..extract import extract

    t_all = time.perf_counter()
    part = source.sampled(sample, seed=seed)
    n = len(part.splits()["train"])

    def features(spec: str, weights: str | None):
        bb = load_backbone(spec, weights, device=device)
        result = extract(part, bb, cache_dir=cache_dir, device=device, progress=progress)
        log.info(f"{'reused' if result.reused else 'extracted'} {bb.name} {bb.weights} on {n} sampled items: "
                 f"{result.path}")
        X, y = open_features(result.path)["train"].labelled()
        return bb, result, X, y

    rows = []
    for spec, weights in candidates:
        t0 = time.perf_counter()
        bb, result, X, y = features(spec, weights)
        scores = _scores(X, y, folds)
        rows.append({"backbone": bb.name, "weights": bb.weights, "scores": scores, "probe_top1": scores["probe_top1"],
                     "feature_dim": bb.feature_dim, "cache": str(result.path), "reused": result.reused,
                     "seconds": round(time.perf_counter() - t0, 2)})
    arch = candidates[0][0]
    _, _, Xr, yr = features(arch, "none")
    random_init = _scores(Xr, yr, folds)
    Xp, yp = raw_pixels(part)
    pixels = _scores(Xp, yp, folds)
    best_baseline = max(random_init["probe_top1"], pixels["probe_top1"])
    for r in rows:
        gain = r["probe_top1"] - best_baseline
        se = gain_se(r["probe_top1"], best_baseline, n)
        r.update(transfer_gain=round(gain, 4), transfer_gain_se=round(se, 4), negative_transfer=bool(gain <= 0))
    rows.sort(key=lambda r: r["scores"]["logme"], reverse=True)
    return {
        "source": part.describe(), "sample": part.sample, "n_sampled": n, "classes": list(part.classes),
        "folds": folds, "candidates": rows, "predicted_best": {"backbone": rows[0]["backbone"],
                                                               "weights": rows[0]["weights"]},
        "baselines": {"random_init": random_init["probe_top1"], "raw_pixels": pixels["probe_top1"],
                      "random_init_backbone": arch.partition(":")[0], "random_init_scores": random_init,
                      "raw_pixels_scores": pixels, "raw_pixels_size": RAW_PIXELS_SIZE},
        "featx_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "total_seconds": round(time.perf_counter() - t_all, 2),
    }
