"""Choosing layers of a multi-layer cache (``featx extract --layers stages``) for a head: ``--layers last|all|NAMES``
on ``featx fit`` and ``featx grid``. The head becomes a pipeline whose first step keeps those columns
(:class:`LayerColumns`), so it still takes the cache's whole feature vector: ``featx predict`` and
``featx export-model`` need nothing else."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ..errors import FeatxUsageError

__all__ = ["LayerColumns", "layer_columns", "with_layers"]


class LayerColumns(TransformerMixin, BaseEstimator):
    """Keeps the feature columns ``columns`` (indices, in order)."""

    def __init__(self, columns=None):
        self.columns = columns

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        return np.asarray(X)[:, list(self.columns)]


def layer_columns(meta: dict, layers: str | None) -> tuple[list[int] | None, list[str]]:
    """The columns of ``layers`` (``all``/``None``: every column, ``None`` returned; ``last``: the last part; else
    comma-separated part names) in a cache whose attributes ``meta`` record ``layer_parts``; and the part names."""
    if layers in (None, "", "all"):
        return None, []
    parts = meta.get("layer_parts")
    if not parts:
        raise FeatxUsageError(f"--layers {layers}: this cache holds one layer; extract it with --layers stages "
                              "(or A,B,...) to choose among several", param="layers")
    names = [n for n, _ in parts]
    wanted = [names[-1]] if layers == "last" else [w.strip() for w in layers.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise FeatxUsageError(f"--layers: {unknown[0]!r} is not a layer of this cache ({', '.join(names)})",
                              param="layers")
    starts = np.cumsum([0] + [w for _, w in parts])
    columns = [c for i, n in enumerate(names) if n in wanted for c in range(starts[i], starts[i + 1])]
    return columns, [n for n in names if n in wanted]


def with_layers(head, columns: list[int] | None):
    """``head`` (a pipeline) with :class:`LayerColumns` as its first step; unchanged for ``None``."""
    if columns is None:
        return head
    head.steps.insert(0, ("layers", LayerColumns(columns)))
    return head
