"""The 2-D embedding map's projection, shared by ``featx map`` and the audit's and grid's reports: UMAP through
umap-learn (the ``map`` extra) on L2-normalised embeddings, PCA when it is missing (and said so)."""

from __future__ import annotations

import importlib.util

import numpy as np

from ..util import l2_normalise

__all__ = ["project_2d"]


def project_2d(X: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """``(N, 2)`` coordinates in [0, 1] of the rows of ``X`` and how they were projected (a sentence)."""
    Z = l2_normalise(X).astype(np.float32)
    if len(Z) >= 10 and importlib.util.find_spec("umap") is not None:
        import umap

        xy = umap.UMAP(n_neighbors=min(15, len(Z) - 1), min_dist=0.1, metric="cosine",
                       random_state=seed, n_jobs=1).fit_transform(Z)  # seeded: one thread (said, not warned)
        method = "UMAP (umap-learn; cosine, 15 neighbours, min_dist 0.1)"
    else:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=seed).fit_transform(Z) if len(Z) > 2 else np.zeros((len(Z), 2))
        method = ("PCA (umap-learn is not installed: pip install 'featx[map]' for UMAP)"
                  if len(Z) >= 10 else "PCA (too few points for UMAP)")
    xy = np.asarray(xy, np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return (xy - lo) / np.where(hi > lo, hi - lo, 1.0), method
