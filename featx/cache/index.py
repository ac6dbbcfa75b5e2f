"""Nearest neighbours over embeddings: the one blocked top-k search every command uses.

- :func:`top_k`: the ``k`` largest entries of each row of a similarity block, best first.
- :func:`self_top_k`: for every row of a set, its ``k`` most similar *other* rows, one block of rows at a time
  against the whole set, with any similarity (``featx audit``'s look-alikes by cosine, its copy candidates by the
  correlation of blurred views).
- :func:`cosine_self_top_k`: the same by cosine on embeddings, exact by blocks or through a FAISS index.
- :func:`cosine_top_k`: the ``k`` rows most similar to each query over a stream of row blocks (a cache read block
  by block, so a cache larger than memory works): ``featx neighbors``.

Memory stays at one ``block x N`` (or ``queries x (k + block)``) similarity matrix.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Iterable

import numpy as np

from ..errors import FeatxError
from ..util import l2_normalise

__all__ = ["BLOCK_ROWS", "top_k", "self_top_k", "cosine_self_top_k", "cosine_top_k", "numbered_blocks"]

#: Rows per block of a search (a block x N similarity matrix at a time).
BLOCK_ROWS = 2048


def top_k(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of ``S`` and their columns, best first (ties: the lower column)."""
    k = min(k, S.shape[1])
    if k < S.shape[1]:
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(S.shape[1]), S.shape).copy()
    ps = np.take_along_axis(S, part, axis=1)
    order = np.lexsort((part, -ps), axis=1) if ps.size else np.zeros_like(part)
    return np.take_along_axis(ps, order, axis=1), np.take_along_axis(part, order, axis=1)


def self_top_k(n: int, k: int, similarity: Callable[[int, int], np.ndarray], *,
               block: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``n`` rows, its ``k`` most similar other rows: ``(similarities, indices)``, each ``(n, k)``,
    best first. ``similarity(lo, hi)`` returns rows ``lo:hi`` against all ``n`` rows (a writable array)."""
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    sims = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        S = similarity(lo, hi)
        S[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # not itself
        sims[lo:hi], idx[lo:hi] = top_k(S, k)
    return sims, idx


def cosine_self_top_k(X: np.ndarray, k: int, *, block: int = BLOCK_ROWS,
                      index: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar other rows of every row by cosine (see :func:`self_top_k`). ``index="faiss"`` uses a
    FAISS inner-product index (exact, ``IndexFlatIP``)."""
    Z = l2_normalise(X)
    n = len(Z)
    if index == "faiss" and min(k, n - 1) >= 1:
        if importlib.util.find_spec("faiss") is None:
            raise FeatxError("faiss needs the faiss package, not installed here: pip install faiss-cpu", param="index")
        import faiss

        k = min(k, n - 1)
        ix = faiss.IndexFlatIP(Z.shape[1])
        ix.add(Z)
        sims, idx = ix.search(Z, k + 1)
        keep = idx != np.arange(n)[:, None]
        return (np.stack([s[m][:k] for s, m in zip(sims, keep)]), np.stack([i[m][:k] for i, m in zip(idx, keep)]))
    return self_top_k(n, k, lambda lo, hi: Z[lo:hi] @ Z.T, block=block)


def cosine_top_k(queries: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]],
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows most similar (cosine) to each query over ``blocks``, a stream of ``(first row number, rows)``:
    ``(similarities, row numbers)``, each ``(queries, <= k)``, best first. Keeps only the best ``k`` so far."""
    q = l2_normalise(queries)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start, rows in blocks:
        s = q @ l2_normalise(rows).T
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)], axis=1)
        best_s, keep = top_k(cand_s, k)
        best_i = np.take_along_axis(cand_i, keep, axis=1)
    return best_s, best_i


def numbered_blocks(fs, splits=None, block: int = BLOCK_ROWS):
    """``(first row number, rows)`` of cache ``fs``'s features, block by block: the ``splits`` (default all, in the
    cache's order) numbered one after another, as :func:`featx.inference.nearest` and ``featx index`` number them."""
    first = 0
    for split in splits or fs.splits:
        view, n = fs[split], len(fs[split])
        for lo in range(0, n, block):
            yield first + lo, view.rows(lo, min(n, lo + block))
        first += n
