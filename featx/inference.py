"""New images through a cache's own backbone: embed them, predict with a head, find their nearest cached items.

Everything here rebuilds the backbone a cache (or a head's card) records -- model, weights, layer,
transform, precision -- and refuses when the one available here is not that one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import FeatxError
from .util import l2_normalise

__all__ = ["backbone_for", "image_paths", "embed_images", "predict_images", "nearest"]

def backbone_for(meta: dict, *, device: str = "cpu"):
    """The backbone that made a cache with metadata ``meta``, or a one-line error saying why not."""
    from .backbones.registry import load_backbone

    layer = meta.get("layer")
    bb = load_backbone(meta["backbone"], meta.get("weights"), device=device,
                       layer=None if layer in (None, "", "penultimate") else layer)
    recorded_sha = meta.get("weights_sha256") or None
    if recorded_sha and bb.weights_sha256 and bb.weights_sha256 != recorded_sha:
        raise FeatxError(f"the {meta['backbone']} weights here (sha256 {bb.weights_sha256[:12]}...) are not the ones "
                         f"the embeddings were made with ({recorded_sha[:12]}...)")
    if meta.get("transform") and bb.preprocess != meta["transform"]:
        raise FeatxError(f"the {meta['backbone']} transform here differs from the recorded one: "
                         f"{bb.preprocess} vs {meta['transform']}")
    if int(meta.get("feature_dim", bb.feature_dim)) != bb.feature_dim:
        raise FeatxError(f"{meta['backbone']} gives {bb.feature_dim}-d embeddings here, {meta['feature_dim']}-d recorded")
    return bb


def image_paths(targets: Iterable[str | os.PathLike]) -> list[str]:
    """Image files named directly, or found (recursively, hidden files skipped) in folders."""
    from .data.sources import image_files

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
    from .analysis.calibration import calibrate, decision_scores

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


@dataclass
class Neighbor:
    rank: int
    split: str
    row: int
    id: str
    label: str
    similarity: float


def nearest(fs, queries: np.ndarray, k: int = 5, *, splits: Iterable[str] | None = None,
            block: int = 16384) -> list[list[Neighbor]]:
    """The ``k`` cached items most similar (cosine) to each query embedding, best first.

    Reads the cache block by block, keeping only the best ``k`` so far, so a cache larger than
    memory works too.
    """
    q = l2_normalise(queries)
    names = list(splits or fs.splits)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_split = np.zeros((len(q), 0), np.int64)  # index into names
    best_row = np.zeros((len(q), 0), np.int64)
    for si, split in enumerate(names):
        view = fs[split]
        n = len(view)
        for start in range(0, n, block):
            X = l2_normalise(view.rows(start, min(n, start + block)))
            s = q @ X.T
            cand_s = np.concatenate([best_s, s], axis=1)
            cand_split = np.concatenate([best_split, np.full(s.shape, si)], axis=1)
            cand_row = np.concatenate([best_row, np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)], axis=1)
            keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s, best_split, best_row = (np.take_along_axis(a, keep, axis=1) for a in (cand_s, cand_split, cand_row))
    used = {names[i] for i in np.unique(best_split)}
    ids = {s: fs[s].ids for s in used}
    labels = {s: fs[s].y for s in used}
    out = []
    for qs, qsplit, qrow in zip(best_s, best_split, best_row):
        row = []
        for rank, (sim, si, r) in enumerate(zip(qs, qsplit, qrow), 1):
            split = names[si]
            y = int(labels[split][r])
            row.append(Neighbor(rank, split, int(r), str(ids[split][r]), fs.classes[y] if y >= 0 else "", float(sim)))
        out.append(row)
    return out
