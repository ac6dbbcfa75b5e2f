"""``featx fit --update HEAD NEW_CACHE``: fold the labelled train rows of another cache -- new images, new classes --
into a saved streaming head (``slda``, ``ncm``) without revisiting the rows it learnt from.

The new cache must hold the same features (the head's embedding record: backbone, weights, layer, transform,
precision ...); its classes are matched to the head's by name, and names the head has not seen become new
classes, appended to the card's list. The updated head is written to a new file (never over the head it came
from), its card records the update history (each cache, its key, rows, new classes, seconds) and the metrics on
the new cache's val and test splits (every class the head knows is a candidate). The temperature is fitted again on
the new cache's val split (the old one described another head)."""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache.spec import EmbeddingSpec
from ..cache.store import open_features
from ..errors import FeatxError, FeatxUsageError
from ..heads.incremental import as_classifier_sees, partial_fit_head
from ..heads.persist import default_head_path, load_head, read_card, save_head
from ..heads.registry import HEADS, head_params
from .evaluate import evaluate
from .fitting import fit_calibration

__all__ = ["UpdateResult", "update_head", "updated_head_path"]


@dataclass(frozen=True)
class UpdateResult:
    head_path: Path
    card_path: Path
    head: str
    rows: int
    new_classes: list[str]
    n_classes: int
    seconds: float
    metrics: dict
    calibration: dict | None
    shrinkage: dict | None = None


def updated_head_path(head_path, cache) -> Path:
    """Where an updated head goes by default: beside the new cache, ``<new cache>.<head>.skops``."""
    card = read_card(head_path) or {}
    return default_head_path(cache, str(card.get("head") or "head"))


def incremental_head_name(head_path) -> str:
    """The head's name from its card, or a usage error when it is not a streaming head (checked before loading)."""
    card = read_card(head_path)
    if card is None:
        raise FeatxUsageError(f"{head_path} has no card saying which head it is: --update takes a head saved by "
                              "featx fit")
    name = card.get("head")
    if name not in HEADS or not HEADS[name].incremental:
        streaming = ", ".join(n for n, s in HEADS.items() if s.incremental)
        raise FeatxUsageError(f"{head_path} is a {name} head, which learns from all its rows at once: --update takes "
                              f"the streaming heads ({streaming}); refit {name} on all the rows instead")
    return name


def update_head(head_path, cache, *, out=None, retune: bool = False) -> UpdateResult:
    """Update the streaming head saved at ``head_path`` with ``cache``'s labelled train rows; save it to ``out``
    (default :func:`updated_head_path`). ``retune``: choose slda's shrinkage again on ``cache``'s labelled val rows
    (its statistics need no old rows; without it the head keeps its shrinkage and equals one fitted at once)."""
    name = incremental_head_name(head_path)
    est, card = load_head(head_path)
    fs = open_features(cache)
    if "train" not in fs:
        raise FeatxError(f"{cache} has no train split to update the head with")
    theirs = EmbeddingSpec.from_attrs(fs.meta)
    mine = EmbeddingSpec.from_attrs(card.get("embedding") or {})
    if not mine.same_features(theirs):
        raise FeatxUsageError(f"{cache} holds other features than the head was trained on ("
                              f"{mine.difference(theirs, mine='in the head', theirs='in the cache')}): extract it with "
                              "the settings in the head's card (its embedding record)")
    names = list(card.get("classes") or [])
    new = [c for c in fs.classes if c not in names]
    names += new
    to_head = np.array([names.index(c) for c in fs.classes], dtype=np.int64)

    def mapped(y):
        return np.where(y >= 0, to_head[np.maximum(y, 0)], -1)

    X, y = fs["train"].labelled()
    if not len(y):
        raise FeatxError(f"{cache}: its train split has no labelled rows to update the head with")
    t0 = time.perf_counter()
    partial_fit_head(est, X, mapped(y))
    shrinkage = _retune(est, fs, mapped) if retune else None
    seconds = time.perf_counter() - t0
    metrics = {s: evaluate(est, fs[s].X, mapped(fs[s].y)) for s in ("val", "test") if s in fs}
    calibration = fit_calibration(est, fs, relabel=mapped)  # the old temperature described another head
    if calibration:
        calibration["fitted_on"] = "val of the update's cache"
    entry = {"cache": str(fs.path), "cache_key": fs.cache_key, "rows": int(len(y)), "new_classes": new,
             "seconds": round(seconds, 3), "metrics": metrics, **({"shrinkage": shrinkage} if shrinkage else {}),
             "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    target = Path(out) if out else updated_head_path(head_path, cache)
    n_train = int(card.get("n_train") or 0) + len(y)
    keep = {k: card[k] for k in ("tuning", "cache", "cache_key") if k in card}
    head_path, card_path = save_head(
        est, target, head_name=name, params=head_params(est), metrics=metrics, fit_seconds=seconds, n_train=n_train,
        fs=fs, extra={**keep, "classes": names, "updates": [*card.get("updates", []), entry],
                      "calibration": calibration or {"skipped": "no labelled val rows in the update's cache"}})
    return UpdateResult(head_path, card_path, name, len(y), new, len(names), seconds, metrics, calibration, shrinkage)


def _retune(est, fs, mapped) -> dict | None:
    """slda's shrinkage chosen again on the update cache's labelled val rows: ``{"from", "to", "on"}``."""
    from ..heads.registry import SLDA_SHRINKAGE_GRID

    clf = est.steps[-1][1]
    if not hasattr(clf, "tune_shrinkage"):
        raise FeatxUsageError("--retune is for the slda head (ncm has no parameter)")
    if "val" not in fs or not (fs["val"].y >= 0).any():
        raise FeatxUsageError(f"--retune chooses on the val split, and {fs.path} has no labelled val rows")
    keep = fs["val"].y >= 0
    before = clf.shrinkage
    clf.tune_shrinkage(as_classifier_sees(est, fs["val"].X[keep]), mapped(fs["val"].y[keep]), SLDA_SHRINKAGE_GRID)
    return {"from": before, "to": clf.shrinkage, "on": f"{int(keep.sum())} val rows of {fs.path.name} (top-1)"}
