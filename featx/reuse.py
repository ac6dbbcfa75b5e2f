"""Using a cache and a trained head elsewhere: embed new images, predict, nearest neighbours, export.

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

__all__ = ["EMBEDDING_META", "backbone_for", "image_paths", "embed_images", "predict_images", "nearest",
           "linear_weights", "export_arrays", "export_model"]

#: Cache attributes that determine the embedding (copied into a head's card by ``featx fit``).
EMBEDDING_META = ("backbone", "weights", "weights_sha256", "transform", "layer", "precision", "feature_dim",
                  "memory_format", "decoder")


def backbone_for(meta: dict, *, device: str = "cpu"):
    """The backbone that made a cache with metadata ``meta``, or a one-line error saying why not."""
    from .backbones import load_backbone

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
    from .sources import _image_files

    out: list[str] = []
    for t in targets:
        p = Path(t)
        if p.is_dir():
            out += _image_files(p)
        elif p.exists():
            out.append(str(p))
        else:
            raise FeatxError(f"{t} does not exist")
    return out


def embed_images(bb, paths: list[str], *, device: str = "cpu", precision: str = "fp32", batch_size: int = 16,
                 decoder: str = "pil",
                 progress: Callable[[int], None] = lambda n: None) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Embeddings of the readable images among ``paths`` -> (features, their paths, [(path, reason)] unreadable).

    ``decoder`` is the one the cache was made with (``pil`` or ``torchvision``, see ``featx.extract.DECODERS``).
    """
    import torch

    from .extract import embed, image_input

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
    kind: str  # "probability" or "decision score"


def predict_images(head, classes: list[str], X: np.ndarray, paths: list[str], k: int = 5) -> list[Prediction]:
    """Top-k classes of each row, by probability when the head has them, else by decision score."""
    if hasattr(head, "predict_proba"):
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
    q = np.asarray(queries, dtype=np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    names = list(splits or fs.splits)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_split = np.zeros((len(q), 0), np.int64)  # index into names
    best_row = np.zeros((len(q), 0), np.int64)
    for si, split in enumerate(names):
        view = fs[split]
        n = len(view)
        for start in range(0, n, block):
            X = view.rows(start, min(n, start + block))
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
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


def linear_weights(head) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with ``scores = x @ W.T + b`` for a linear head (scaling steps folded in).

    Raises:
        FeatxError: the head is not linear (k-NN, a kernel map).
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = list(head.named_steps.values()) if isinstance(head, Pipeline) else [head]
    *pre, clf = steps
    if not hasattr(clf, "coef_") or any(not isinstance(s, StandardScaler) for s in pre):
        kinds = ", ".join(type(s).__name__ for s in steps)
        raise FeatxError(f"only linear heads (logreg, svm, torch-linear) can be exported as one model; this one is "
                         f"{kinds}")
    W = np.asarray(clf.coef_, dtype=np.float64)
    b = np.asarray(clf.intercept_, dtype=np.float64)
    if W.shape[0] == 1 and len(clf.classes_) == 2:  # sklearn's binary layout: one row for the second class
        W, b = np.concatenate([-W / 2, W / 2]), np.concatenate([-b / 2, b / 2])
    for scaler in reversed(pre):  # x -> (x - mean) / scale, folded into W and b
        mean = scaler.mean_ if scaler.with_mean else 0.0
        scale = scaler.scale_ if scaler.with_std else 1.0
        W = W / scale
        b = b - W @ (mean if np.ndim(mean) else np.full(W.shape[1], mean))
    return W.astype(np.float32), b.astype(np.float32)


def export_arrays(fs, out: Path, fmt: str) -> list[Path]:
    """Write every split's features, labels and ids as ``npz`` (one file), ``npy`` (a folder) or ``parquet``."""
    import json

    out = Path(out)
    written = []
    if fmt == "npz":
        arrays = {"classes": np.array(fs.classes)}
        for s in fs.splits:
            v = fs[s]
            arrays.update({f"{s}_X": v.X, f"{s}_y": v.y, f"{s}_ids": np.array(v.ids, dtype=str)})
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
        written.append(out)
    elif fmt == "npy":
        out.mkdir(parents=True, exist_ok=True)
        for s in fs.splits:
            v = fs[s]
            for name, arr in (("X", v.X), ("y", v.y), ("ids", np.array(v.ids, dtype=str))):
                np.save(out / f"{s}_{name}.npy", arr)
                written.append(out / f"{s}_{name}.npy")
        (out / "classes.json").write_text(json.dumps(list(fs.classes), ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(out / "classes.json")
    elif fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise FeatxError("--format parquet needs pyarrow, which is not installed: pip install pyarrow") from None
        tables = []
        for s in fs.splits:
            v = fs[s]
            y = v.y
            tables.append(pa.table({
                "split": pa.array([s] * len(y)), "id": pa.array(list(v.ids)), "label": pa.array(y),
                "class": pa.array([fs.classes[i] if i >= 0 else None for i in y]),
                "features": pa.FixedSizeListArray.from_arrays(pa.array(v.X.reshape(-1)), int(v.X.shape[1]) if len(y) else 1),
            }))
        pq.write_table(pa.concat_tables(tables), out)
        written.append(out)
    else:
        raise FeatxError(f"unknown export format {fmt!r} (npz, npy or parquet)")
    return written


def export_model(head, bb, out: Path, fmt: str) -> Path:
    """One module: preprocessed image batch ``(N, 3, H, W)`` -> backbone -> the head's class scores."""
    import torch

    W, b = linear_weights(head)
    if W.shape[1] != bb.feature_dim:
        raise FeatxError(f"the head takes {W.shape[1]}-d features, the backbone gives {bb.feature_dim}-d")
    fc = torch.nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(W))
        fc.bias.copy_(torch.from_numpy(b))
    model = torch.nn.Sequential(bb.model, fc).eval().cpu()
    size = bb.preprocess.get("input_size", (3, 224, 224))
    example = torch.zeros(1, *size)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if fmt == "torchscript":
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still the format
            traced = torch.jit.trace(model, example)        # every C++/mobile runtime loads
        traced.save(str(tmp))
    elif fmt == "onnx":
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            raise FeatxError("--format onnx needs the onnx package, which is not installed: pip install onnx")
        torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["scores"],
                          dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False)
    else:
        raise FeatxError(f"unknown model format {fmt!r} (torchscript or onnx)")
    os.replace(tmp, out)
    return out
