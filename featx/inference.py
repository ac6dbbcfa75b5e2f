"""New images through a cache's own backbone: embed them, predict with a head, find their nearest cached items.

Everything here rebuilds the backbone a cache (or a head's card) records -- model, weights, layer,
transform, precision -- and refuses when the one available here is not that one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import FeatxError

log = logging.getLogger("featx")

__all__ = ["backbone_for", "image_paths", "embed_images", "predict_images", "nearest"]

def backbone_for(meta: dict, *, device: str = "cpu"):
    """The backbone that made a cache with metadata ``meta`` (or a head card's ``embedding`` record), or a one-line
    error saying why the one here is not that one (weights, transform or embedding size differ)."""
    import dataclasses

    from .backbones.registry import load_backbone, recorded_weights
    from .cache.spec import EmbeddingSpec

    spec = EmbeddingSpec.from_attrs(meta)
    bb = load_backbone(spec.backbone, recorded_weights(meta), device=device, layer=spec.layer, pooling=spec.pooling)
    here = dataclasses.replace(spec, weights_sha256=bb.weights_sha256 or None, transform=dict(bb.preprocess),
                               feature_dim=bb.feature_dim)
    if not spec.same_features(here):
        raise FeatxError(f"the {spec.backbone} here is not the one the embeddings were made with: "
                         f"{here.difference(spec, mine='here', theirs='recorded')}")
    return bb


def image_paths(targets: Iterable[str | os.PathLike]) -> list[str]:
    """Image files named directly, or found (recursively, hidden files skipped) in folders."""
    from .data.files import image_files

    out: list[str] = []
    for t in targets:
        p = Path(t)
        if p.is_dir():
            out += image_files(p)
        elif p.exists():
            out.append(str(p))
        else:
            raise FeatxError(f"{t} does not exist")
    return out


def embed_images(bb, paths: list[str], *, device: str = "cpu", precision: str = "fp32", batch_size: int = 16,
                 decoder: str = "pil",
                 progress: Callable[[int], None] = lambda n: None) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Embeddings of the readable images among ``paths`` -> (features, their paths, [(path, reason)] unreadable).

    ``decoder`` is the one the cache was made with (``pil`` or ``torchvision``, see ``featx.options.DECODERS``).
    """
    import torch

    from .data.decoding import image_input
    from .extract import embed

    dev = torch.device(device)
    feats, good, bad = [], [], []
    batch, names = [], []

    def flush():
        if batch:
            feats.append(embed(bb, torch.stack(batch), device=dev, precision=precision))
            good.extend(names)
            progress(len(batch))
            batch.clear()
            names.clear()

    for p in paths:
        try:
            batch.append(image_input(p, bb.transform, decoder))
            names.append(p)
        except Exception as exc:  # an unreadable image is reported, not fatal
            bad.append((p, f"{type(exc).__name__}: {exc}"))
            progress(1)
        if len(batch) >= batch_size:
            flush()
    flush()
    X = np.concatenate(feats) if feats else np.zeros((0, bb.feature_dim), np.float32)
    return X, good, bad


@dataclass
class Prediction:
    path: str
    labels: list[str]
    scores: list[float]
    kind: str  # "probability", "calibrated probability" or "decision score"


def predict_images(head, classes: list[str], X: np.ndarray, paths: list[str], k: int = 5, *,
                   temperature: float | None = None) -> list[Prediction]:
    """Top-k classes of each row: by the temperature-scaled probability when the head's card records a
    ``temperature`` (``featx fit`` fits one on val), else by probability when the head has them, else by
    decision score."""
    from .probe.calibration import calibrate, decision_scores

    if temperature and hasattr(head, "decision_function"):
        scores, kind = calibrate(decision_scores(head, X), float(temperature)), "calibrated probability"
    elif hasattr(head, "predict_proba"):
        scores, kind = head.predict_proba(X), "probability"
    else:
        scores, kind = head.decision_function(X), "decision score"
        if scores.ndim == 1:  # binary: score of the second class
            scores = np.stack([-scores, scores], axis=1)
    names = [classes[int(c)] if 0 <= int(c) < len(classes) else str(c) for c in head.classes_]
    k = min(k, len(names))
    out = []
    for path, row in zip(paths, scores):
        top = np.argsort(-row, kind="stable")[:k]
        out.append(Prediction(path, [names[i] for i in top], [float(row[i]) for i in top], kind))
    return out


def predict_label_sets(head, classes: list[str], X: np.ndarray, paths: list[str], thresholds) -> list[Prediction]:
    """Every label whose score reaches its threshold (a multi-label head; the card's thresholds, chosen on val), the
    highest score first."""
    from .heads.multilabel import label_scores, score_kind

    S = label_scores(head, X)
    kind = f"{score_kind(head)}, labels at or above their thresholds"
    out = []
    for path, row in zip(paths, S):
        above = [j for j in np.argsort(-row, kind="stable") if row[j] >= thresholds[j]]
        out.append(Prediction(path, [classes[j] for j in above], [float(row[j]) for j in above], kind))
    return out


@dataclass
class Neighbor:
    rank: int
    split: str
    row: int
    id: str
    label: str
    similarity: float


def nearest(fs, queries: np.ndarray, k: int = 5, *, splits: Iterable[str] | None = None,
            block: int = 16384, use_index: bool = True) -> list[list[Neighbor]]:
    """The ``k`` cached items most similar (cosine) to each query embedding, best first.

    Searches the index kept beside the cache (``featx index``; every split) when there is one for this very cache,
    else reads the cache block by block (:func:`featx.cache.index.cosine_top_k`), so a cache larger than memory
    works either way.
    """
    from .cache.index import cosine_top_k, numbered_blocks

    names = list(splits or fs.splits)
    starts = np.cumsum([0] + [len(fs[s]) for s in names])  # every split's rows numbered one after another
    kept = _kept_index(fs) if use_index and names == list(fs.splits) else None
    if kept is not None:
        from .cache.ann import search

        best_s, best_i = search(kept[0], queries, k)
        return _neighbors(fs, names, starts, best_s, best_i)

    best_s, best_i = cosine_top_k(queries, numbered_blocks(fs, names, block), k)
    return _neighbors(fs, names, starts, best_s, best_i)


def _kept_index(fs):
    """The approximate-neighbour index kept beside ``fs`` (``featx index``), when it is this cache's and FAISS is
    here; said once in the log."""
    import importlib.util

    from .cache.ann import index_path, kept_index

    if importlib.util.find_spec("faiss") is None or not index_path(fs.path).is_file():
        return None
    kept = kept_index(fs)
    if kept is None:
        log.info(f"note: {index_path(fs.path)} is an index of another state of this cache: not used (run featx "
                 "index again)")
    else:
        r = kept[1]
        log.info(f"searching the {r['kind']} index {index_path(fs.path)} (recall@10 {r.get('recall_at_10', '?')} "
                 "against the exact search when built)")
    return kept


def _neighbors(fs, names, starts, best_s, best_i) -> list[list[Neighbor]]:
    where = np.searchsorted(starts, best_i, side="right") - 1  # split of each row number
    used = {names[i] for i in np.unique(where)}
    ids = {s: fs[s].ids for s in used}
    labels = {s: fs[s].Y if fs.multilabel else fs[s].y for s in used}

    def label(split: str, r: int) -> str:  # a multi-label row: its labels, ';'-separated
        y = labels[split][r]
        if fs.multilabel:
            return ";".join(fs.classes[j] for j in np.flatnonzero(y > 0)) if (y >= 0).all() else ""
        return fs.classes[int(y)] if y >= 0 else ""

    out = []
    for sims, splits_of, numbers in zip(best_s, where, best_i):
        row = []
        for rank, (sim, si, number) in enumerate(((s, w, n) for s, w, n in zip(sims, splits_of, numbers) if n >= 0), 1):
            split, r = names[si], int(number - starts[si])
            row.append(Neighbor(rank, split, r, str(ids[split][r]), label(split, r), float(sim)))
        out.append(row)
    return out
