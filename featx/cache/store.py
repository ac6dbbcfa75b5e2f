"""The HDF5 embedding cache: its schema and a lazy reader (the writer: :mod:`featx.cache.writer`).

The layout (documented for other projects in ``docs/cache-format.md``)::

    /                      attrs: schema_version, featx_version, created, cache_key, complete,
                                  the EmbeddingSpec (backbone, weights, weights_sha256, layer,
                                  transform (JSON), precision, decoder; feature_dim),
                                  source (JSON), memory_format, compiled,
                                  reused_from (JSON; rows copied from other caches), shard (shard files only)
    /classes               (C,)   utf-8 class names, index = label
    /<split>/features      (N, D) float32, chunked by rows, resizable, fletcher32
    /<split>/labels        (N,)   int64, -1 where unlabelled, fletcher32
    /<split>/ids           (N,)   utf-8 sample id
    /<split>/fingerprints  (N,)   utf-8 content fingerprint per row (optional: caches before row reuse lack it)
    /<split>/label_matrix  (N, C) int8, multi-label caches only (source.multilabel): 1 / 0 per class, -1 rows
                                  unlabelled; their ``labels`` are all -1
    /<split>               attrs: n_committed, n_items, skipped (JSON list of {id, reason})

Writing protocol: everything goes to ``<name>.h5.partial``. After each batch the rows are
written, the file is flushed, and only then ``n_committed`` is raised and flushed again, so
rows past ``n_committed`` are never trusted. :meth:`~featx.cache.writer.FeatureWriter.finalize` checks that
every split holds all of its items, sets ``complete`` and renames the file to ``<name>.h5``. A file
without the ``.partial`` suffix is therefore always complete; a killed run resumes from
``n_committed``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import FeatxError, FeatxUsageError
from ..util import FILE_KINDS, file_kind, first_line
from .spec import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "PARTIAL_SUFFIX",
    "FeatureSet",
    "SplitView",
    "open_features",
    "partial_path",
]

PARTIAL_SUFFIX = ".partial"
#: Attributes of ``/`` that hold JSON text rather than plain values.
JSON_ATTRS = ("transform", "source", "reused_from", "layer_parts", "joined_shards")
_STR = h5py.string_dtype("utf-8")


def partial_path(path: str | os.PathLike) -> Path:
    """Where the unfinished version of the cache ``path`` is written."""
    return Path(str(path) + PARTIAL_SUFFIX)


def _open_read(path: Path) -> h5py.File:
    """Open for reading. An unfinished file may be held by a running writer: inspect it
    without HDF5's file lock (read-only, best effort)."""
    unfinished = str(path).endswith(PARTIAL_SUFFIX)
    return h5py.File(path, "r", locking=False if unfinished else None)


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- reading ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitView:
    """One split of a cache. Arrays are read from disk on access, never kept open."""

    path: Path
    name: str

    def _read(self, key: str, sel=slice(None)):
        try:
            with _open_read(self.path) as f:
                out = f[self.name][key][sel]
        except (OSError, KeyError, ValueError) as exc:
            raise FeatxError(f"cache {self.path} is damaged: {self.name}/{key} cannot be read "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); extract it again") from None
        if key == "features" and out.size and not np.isfinite(out).all():  # a NaN row would vanish from a search
            bad = int((~np.isfinite(out).all(axis=1)).sum())
            raise FeatxError(f"cache {self.path} is damaged: {bad} row(s) of {self.name} have NaN or infinite features; "
                             "extract it again")
        return out

    def __len__(self) -> int:
        with _open_read(self.path) as f:
            return int(f[self.name].attrs["n_committed"])

    @property
    def X(self) -> np.ndarray:
        """Features, ``(N, D)`` float32."""
        return self._read("features")

    @property
    def y(self) -> np.ndarray:
        """Labels, ``(N,)`` int64, -1 where unlabelled."""
        return self._read("labels")

    @property
    def ids(self) -> np.ndarray:
        """Sample ids, ``(N,)`` str."""
        return np.array([_decode(i) for i in self._read("ids")], dtype=object)

    @property
    def fingerprints(self) -> np.ndarray:
        """Each row's content fingerprint (file size and mtime, or the dataset for in-memory sources),
        ``(N,)`` str; empty strings in caches written before featx recorded them."""
        with _open_read(self.path) as f:
            if "fingerprints" not in f[self.name]:
                return np.full(int(f[self.name].attrs["n_committed"]), "", dtype=object)
        return np.array([_decode(i) for i in self._read("fingerprints")], dtype=object)

    @property
    def Y(self) -> np.ndarray | None:
        """A multi-label cache's label matrix, ``(N, C)`` int8 (1 / 0; rows of -1 unlabelled); ``None`` otherwise."""
        with _open_read(self.path) as f:
            if "label_matrix" not in f[self.name]:
                return None
        return self._read("label_matrix")

    def labelled_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """Features and label matrix of a multi-label cache's labelled rows."""
        X, Y = self.X, self.Y
        keep = (Y >= 0).all(axis=1)
        return X[keep], Y[keep].astype(np.int64)

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of the labelled rows only (label >= 0)."""
        X, y = self.X, self.y
        keep = y >= 0
        return X[keep], y[keep]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Features of rows ``start:stop`` only."""
        return self._read("features", slice(start, stop))

    def __getitem__(self, rows) -> np.ndarray:
        """Features of a row range (``view[1000:2000]``) or of row indices (any order, repeats allowed),
        read from disk."""
        if isinstance(rows, slice):
            return self._read("features", rows)
        unique, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)  # h5py wants them sorted
        return self._read("features", unique)[inverse.reshape(-1)]

    def torch(self, start: int = 0, stop: int | None = None):
        """Features of rows ``start:stop`` as a torch tensor (all rows by default)."""
        import torch

        return torch.from_numpy(self._read("features", slice(start, stop)))

    @property
    def classes(self) -> tuple[str, ...]:
        with _open_read(self.path) as f:
            return tuple(_decode(c) for c in f["classes"][()])

    def dataset(self):
        """A ``torch.utils.data.Dataset`` of ``(features, label)`` tensors for a DataLoader.

        Each worker process opens the file itself on first use (h5py handles do not survive a
        fork), and reads one row per item, so ``num_workers > 0`` and shuffling both work.
        """
        return FeatureDataset(str(self.path), self.name)

    def verify(self, block: int = 8192) -> None:
        """Read every row (block by block) so that HDF5 checks each chunk's checksum.

        Raises:
            FeatxError: a chunk is damaged.
        """
        n = len(self)
        for start in range(0, n, block):
            self._read("features", slice(start, min(n, start + block)))
        self._read("labels")
        self._read("ids")

    @property
    def n_items(self) -> int:
        """Items the source listed for this split (rows + skipped when complete)."""
        with _open_read(self.path) as f:
            return int(f[self.name].attrs.get("n_items", f[self.name].attrs["n_committed"]))

    @property
    def skipped(self) -> list[dict]:
        with _open_read(self.path) as f:
            return json.loads(_decode(f[self.name].attrs["skipped"]))


class FeatureDataset:
    """``(features, label)`` rows of one split as a map-style torch dataset (see :meth:`SplitView.dataset`)."""

    def __init__(self, path: str, split: str):
        self.path, self.split = path, split
        with _open_read(Path(path)) as f:
            self._n = int(f[split].attrs["n_committed"])
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int):
        import torch

        if self._file is None or self._pid != os.getpid():  # first use in this process (or after a fork)
            self._file = _open_read(Path(self.path))
            self._pid = os.getpid()
        g = self._file[self.split]
        return torch.from_numpy(g["features"][i]), int(g["labels"][i])

    def __getstate__(self):
        return {"path": self.path, "split": self.split, "_n": self._n, "_file": None, "_pid": None}


@dataclass(frozen=True)
class FeatureSet:
    """A complete cache file: metadata, class names and its splits."""

    path: Path
    meta: dict
    classes: tuple[str, ...]
    splits: tuple[str, ...]

    def __getitem__(self, split: str) -> SplitView:
        if split not in self.splits:
            raise FeatxError(f"{self.path} has no split {split!r} (it has: {', '.join(self.splits)})")
        return SplitView(self.path, split)

    def __contains__(self, split: str) -> bool:
        return split in self.splits

    @property
    def cache_key(self) -> str:
        return self.meta["cache_key"]

    @property
    def feature_dim(self) -> int:
        """The embedding size D."""
        return int(self.meta["feature_dim"])

    @property
    def multilabel(self) -> bool:
        """Whether its items carry label sets (a ``label_matrix`` per split) rather than one label each."""
        return bool((self.meta.get("source") or {}).get("multilabel"))


def read_meta(f: h5py.File) -> dict:
    """The root attributes of an open cache, JSON fields decoded."""
    meta = {k: _decode(v) for k, v in f.attrs.items()}
    for key in JSON_ATTRS:
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


#: Root attributes every featx cache has, and their types.
REQUIRED_ATTRS = {"schema_version": int, "cache_key": str, "backbone": str, "feature_dim": int}


def _layout_problem(f: h5py.File, meta: dict, classes: tuple, splits: tuple, *, complete: bool) -> str:
    """What is wrong with an open cache's layout, in a few words ("" when nothing is): attributes missing or of the
    wrong type, arrays of different lengths or shapes, counts beyond the arrays, labels outside the classes,
    features never written (a sparse dataset). Reads the labels; never the features."""
    for key, kind in REQUIRED_ATTRS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            return f"root attribute {key!r} is {'missing' if key not in meta else 'not ' + kind.__name__}"
    dim = meta["feature_dim"]
    if dim < 1 or not all(isinstance(c, str) for c in classes):
        return "feature_dim or class names are not valid"
    for s in splits:
        g = f[s]
        feats, n = g["features"], g.attrs["n_committed"]
        if feats.ndim != 2 or feats.shape[1] != dim or feats.dtype.kind != "f":
            return f"{s}/features has shape {feats.shape} ({feats.dtype}), not (N, {dim}) floats"
        lengths = {name: g[name].shape[0] for name in ("features", "labels", "ids", "fingerprints") if name in g}
        if not 0 <= int(n) <= min(lengths.values()) or (complete and len(set(lengths.values())) > 1):
            return f"{s} holds {n} committed rows but arrays of {lengths}"
        if complete and int(n) != lengths["features"]:
            return f"{s} holds {n} committed rows of {lengths['features']}"
        if feats.is_virtual:  # shards joined by a virtual dataset: each must be there, or its rows read as NaN
            here = Path(f.filename).parent
            gone = sorted({src.file_name for src in feats.virtual_sources() if not (here / src.file_name).is_file()})
            if gone:
                return f"{s}/features is joined from shard files and {gone[0]} is missing beside it"
        for name in ("features", "labels") if complete else ():  # before reading: a sparse array reads as zeros
            if name == "features" and feats.is_virtual:
                continue
            per_row = dim if name == "features" else 1
            written, needed = g[name].id.get_storage_size(), int(n) * per_row * g[name].dtype.itemsize
            if written < needed // 2:
                return f"{s}/{name}: {written} of {needed} bytes were ever written"
        if "label_matrix" in g and (g["label_matrix"].ndim != 2 or g["label_matrix"].shape != (int(n), len(classes))):
            return f"{s}/label_matrix has shape {g['label_matrix'].shape}, not ({int(n)}, {len(classes)})"
        labels = g["labels"][: int(n)]
        if len(labels) and (labels.min() < -1 or labels.max() >= len(classes)):
            return f"{s} has labels outside -1..{len(classes) - 1} ({int(labels.min())}..{int(labels.max())})"
    return ""


def open_features(path: str | os.PathLike, *, allow_incomplete: bool = False) -> FeatureSet:
    """Open a cache written by featx.

    Args:
        path: the ``.h5`` file.
        allow_incomplete: also open an unfinished ``.h5.partial`` (for inspection only).

    Raises:
        FeatxError: the file is missing, damaged, of an unknown schema, or incomplete.
    """
    path = Path(path)
    if not path.exists():
        hint = ""
        if partial_path(path).exists():
            hint = " (an unfinished extraction exists next to it; run the extraction again to finish it)"
        raise FeatxUsageError(f"cache {path} does not exist{hint}")
    if not path.is_file():  # a folder, a FIFO (opening it would block forever), a device
        raise FeatxUsageError(f"cache {path} is not a regular file")
    kind = file_kind(path)
    if kind != "hdf5":  # a head, an image, a CSV given where a cache goes: a usage error, not a damaged cache
        raise FeatxUsageError(f"{path} is not a featx cache: it is {FILE_KINDS[kind]}")
    try:
        with _open_read(path) as f:
            meta = read_meta(f)
            classes = tuple(_decode(c) for c in f["classes"][()])
            splits = tuple(k for k in f.keys() if k != "classes")
            problem = _layout_problem(f, meta, classes, splits, complete=not allow_incomplete)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise FeatxError(f"cache {path} is damaged or not a featx cache ({first_line(exc)})") from exc
    if problem:
        raise FeatxError(f"cache {path} is damaged or not a featx cache ({problem}); extract it again")
    version = meta.get("schema_version")
    if version is None or int(version) > SCHEMA_VERSION:
        raise FeatxError(f"cache {path} has schema version {version}; this featx reads up to {SCHEMA_VERSION}")
    if not allow_incomplete and (path.name.endswith(PARTIAL_SUFFIX) or not meta.get("complete")):
        raise FeatxError(f"cache {path} is incomplete; run the extraction again to finish it")
    return FeatureSet(path=path, meta=meta, classes=classes, splits=splits)
