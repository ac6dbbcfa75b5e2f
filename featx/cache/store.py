"""The HDF5 embedding cache: its schema, a resumable writer and a lazy reader.

The layout (documented for other projects in ``docs/cache-format.md``)::

    /                  attrs: schema_version, featx_version, created, backbone, weights,
                              weights_sha256, transform (JSON), feature_dim, source (JSON),
                              cache_key, complete, precision
    /classes           (C,)   utf-8 class names, index = label
    /<split>/features  (N, D) float32, chunked by rows, resizable
    /<split>/labels    (N,)   int64, -1 where unlabelled
    /<split>/ids       (N,)   utf-8 sample id
    /<split>           attrs: n_committed, n_items, skipped (JSON list of {id, reason})

Writing protocol: everything goes to ``<name>.h5.partial``. After each batch the rows are
written, the file is flushed, and only then ``n_committed`` is raised and flushed again, so
rows past ``n_committed`` are never trusted. :meth:`FeatureWriter.finalize` checks that every
split holds all of its items, sets ``complete`` and renames the file to ``<name>.h5``. A file
without the ``.partial`` suffix is therefore always complete; a killed run resumes from
``n_committed``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from ..errors import FeatxError, FeatxUsageError
from .spec import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "PARTIAL_SUFFIX",
    "FeatureWriter",
    "FeatureSet",
    "SplitView",
    "open_features",
    "partial_path",
]

PARTIAL_SUFFIX = ".partial"
#: Attributes of ``/`` that hold JSON text rather than plain values.
JSON_ATTRS = ("transform", "source", "reused_from")
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


class FeatureWriter:
    """Append-only, resumable writer of one cache file.

    Args:
        path: the final ``.h5`` path; the writer works on ``path + ".partial"``.
        attrs: root attributes (must contain ``cache_key``; ``transform`` and ``source``
            may be dicts and are stored as JSON).
        classes: class names, index = label.
        split_sizes: number of items per split, in canonical order.
        feature_dim: embedding size D.
        chunk_rows: HDF5 chunk height of the feature datasets.
        fresh: delete an unfinished file of the same cache instead of resuming it (for files
            made from other files, such as a merge, which simply runs again).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        attrs: dict,
        classes: Sequence[str],
        split_sizes: dict[str, int],
        feature_dim: int,
        chunk_rows: int = 256,
        fresh: bool = False,
    ):
        self.path = Path(path)
        self.fresh = fresh
        self.partial = partial_path(path)
        self.attrs = dict(attrs)
        self.classes = list(classes)
        self.split_sizes = dict(split_sizes)
        self.feature_dim = int(feature_dim)
        self.chunk_rows = int(chunk_rows)
        self.resumed = False
        self.discarded: str | None = None
        self._file: h5py.File | None = None
        self._lockfile = None
        self._skipped: dict[str, list[dict]] = {}

    # -- opening -----------------------------------------------------------------------
    def open(self) -> "FeatureWriter":
        """Open the partial file, resuming it when it belongs to the same cache key.

        Raises:
            FeatxError: another process is writing the same cache.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        if self.partial.exists() and self.fresh:  # derived data (a merge): start over, under the lock
            self.partial.unlink()
        if self.partial.exists():
            reason = self._try_resume()
            if reason is None:
                self.resumed = True
                return self
            # Never silently reuse or destroy unknown data: keep it aside, say why.
            aside = self.partial.with_name(self.partial.name + ".discarded")
            os.replace(self.partial, aside)
            self.discarded = f"{reason}; moved it to {aside}"
        self._create()
        return self

    def _lock(self) -> None:
        """One writer per cache: an exclusive, non-blocking lock on ``<partial>.lock``."""
        lock = open(str(self.partial) + ".lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise FeatxError(
                f"another featx process is writing {self.partial}; wait for it to finish (or stop it)"
            ) from None
        self._lockfile = lock

    def _try_resume(self) -> str | None:
        try:
            f = h5py.File(self.partial, "r+")
        except OSError as exc:
            return f"the unfinished cache {self.partial} could not be opened ({exc})"
        try:
            problem = self._check_resumable(f)
        except (KeyError, ValueError, OSError, RuntimeError) as exc:  # h5py raises RuntimeError for a torn chunk
            problem = f"the unfinished cache {self.partial} is damaged ({exc})"
        if problem:
            f.close()
            return problem
        self._file = f
        return None

    def _check_resumable(self, f: h5py.File) -> str | None:
        if _decode(f.attrs.get("cache_key")) != self.attrs["cache_key"]:
            return f"the unfinished cache {self.partial} belongs to another cache key"
        if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
            return f"the unfinished cache {self.partial} has another schema version"
        if set(f.keys()) - {"classes"} != set(self.split_sizes):
            return f"the unfinished cache {self.partial} has other splits"
        for split, size in self.split_sizes.items():
            g = f[split]
            if int(g.attrs["n_items"]) != size:
                return f"the unfinished cache {self.partial} lists other items"
            n = int(g.attrs["n_committed"])
            # Rows past n_committed may be half-written: drop them.
            for name in ("features", "labels", "ids", "fingerprints"):
                if name in g:
                    g[name].resize(n, axis=0)
            self._skipped[split] = json.loads(_decode(g.attrs["skipped"]))
        return None

    def _create(self) -> None:
        from ..version import __version__

        f = h5py.File(self.partial, "w")
        for key, value in self.attrs.items():
            f.attrs[key] = json.dumps(value, sort_keys=True) if key in JSON_ATTRS else value
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["featx_version"] = __version__
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.attrs["feature_dim"] = self.feature_dim
        f.attrs["complete"] = False
        f.create_dataset("classes", data=np.array(self.classes, dtype=object), dtype=_STR)
        rows = self.chunk_rows
        for split, size in self.split_sizes.items():
            g = f.create_group(split)
            # fletcher32: a checksum per chunk, so flipped bytes are an error on reading, not wrong numbers
            g.create_dataset(
                "features", shape=(0, self.feature_dim), maxshape=(None, self.feature_dim),
                chunks=(rows, self.feature_dim), dtype="float32", fletcher32=True,
            )
            g.create_dataset("labels", shape=(0,), maxshape=(None,), chunks=(rows * 16,), dtype="int64",
                             fletcher32=True)
            g.create_dataset("ids", shape=(0,), maxshape=(None,), chunks=(rows * 16,), dtype=_STR)
            g.create_dataset("fingerprints", shape=(0,), maxshape=(None,), chunks=(rows * 16,), dtype=_STR)
            g.attrs["n_committed"] = 0
            g.attrs["n_items"] = int(size)
            g.attrs["skipped"] = "[]"
            self._skipped[split] = []
        f.flush()
        self._file = f

    # -- writing -----------------------------------------------------------------------
    def position(self, split: str) -> int:
        """How many items of ``split`` are done (written or recorded as skipped)."""
        g = self._file[split]
        return int(g.attrs["n_committed"]) + len(self._skipped[split])

    def append(
        self,
        split: str,
        features: np.ndarray,
        labels: Iterable[int],
        ids: Sequence[str],
        skipped: Sequence[tuple[str, str]] = (),
        fingerprints: Sequence[str] | None = None,
    ) -> None:
        """Write one batch of rows (and the items of that batch that were skipped), then commit.
        ``fingerprints``: each row's content fingerprint (``Source.item_fingerprints``), for row reuse."""
        f = self._file
        g = f[split]
        n = int(g.attrs["n_committed"])
        k = len(ids)
        features = np.asarray(features, dtype=np.float32)
        if features.shape != (k, self.feature_dim):
            raise FeatxError(
                f"internal: batch of shape {features.shape} does not fit ({k}, {self.feature_dim})"
            )
        self._check_room(k)
        if k:
            names = ("features", "labels", "ids", "fingerprints") if "fingerprints" in g else ("features", "labels", "ids")
            for name in names:
                g[name].resize(n + k, axis=0)
            g["features"][n : n + k] = features
            g["labels"][n : n + k] = np.asarray(list(labels), dtype=np.int64)
            g["ids"][n : n + k] = np.array(list(ids), dtype=object)
            if "fingerprints" in g:
                g["fingerprints"][n : n + k] = np.array(list(fingerprints) if fingerprints is not None else [""] * k,
                                                        dtype=object)
            f.flush()
        if skipped:
            self._skipped[split].extend({"id": i, "reason": r} for i, r in skipped)
            g.attrs["skipped"] = json.dumps(self._skipped[split])
        g.attrs["n_committed"] = n + k
        f.flush()

    def _check_room(self, rows: int) -> None:
        """Refuse a batch the disk (or the process's file-size limit) cannot take, before HDF5 tries.

        HDF5 does not survive a failed write: the library can crash in the next flush and leave
        the file unreadable. Checking first keeps the partial file as it was after the last
        committed batch, so the run resumes once there is room. The estimate is generous: the
        batch plus two chunks of every dataset (the file grows a chunk at a time) plus 1 MiB.
        """
        chunk = self.chunk_rows * (self.feature_dim * 4 + 16 * (8 + 16))
        need = rows * (self.feature_dim * 4 + 8 + 64) + 2 * chunk + (1 << 20)
        room = shutil.disk_usage(self.partial.parent).free
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            room = min(room, soft - os.path.getsize(self.partial))
        if room < need:
            raise OSError(errno.ENOSPC, f"{need >> 10} KiB needed, {max(room, 0) >> 10} KiB left")

    def set_attr(self, key: str, value) -> None:
        """Set a root attribute before :meth:`finalize` (dicts and lists stored as JSON)."""
        self._file.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value

    def finalize(self) -> Path:
        """Check every split is whole, mark the file complete and move it into place."""
        for split, size in self.split_sizes.items():
            done = self.position(split)
            if done != size:
                raise FeatxError(f"internal: split {split!r} has {done} of {size} items; not finalizing")
        self._file.attrs["complete"] = True
        self._file.flush()
        self._file.close()
        self._file = None
        os.replace(self.partial, self.path)
        os.unlink(self._lockfile.name)  # still held: no other writer can be between these lines
        self.close()
        return self.path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lockfile is not None:
            self._lockfile.close()  # releases the lock; the empty lock file may stay
            self._lockfile = None

    def __enter__(self) -> "FeatureWriter":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


# -- reading ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitView:
    """One split of a cache. Arrays are read from disk on access, never kept open."""

    path: Path
    name: str

    def _read(self, key: str, sel=slice(None)):
        try:
            with _open_read(self.path) as f:
                return f[self.name][key][sel]
        except (OSError, KeyError, ValueError) as exc:
            raise FeatxError(f"cache {self.path} is damaged: {self.name}/{key} cannot be read "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); extract it again") from None

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


def read_meta(f: h5py.File) -> dict:
    """The root attributes of an open cache, JSON fields decoded."""
    meta = {k: _decode(v) for k, v in f.attrs.items()}
    for key in JSON_ATTRS:
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


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
    try:
        with _open_read(path) as f:
            meta = read_meta(f)
            classes = tuple(_decode(c) for c in f["classes"][()])
            splits = tuple(k for k in f.keys() if k != "classes")
            for s in splits:
                f[s]["features"].shape, f[s].attrs["n_committed"]  # noqa: B018 - probe layout
    except (OSError, KeyError, ValueError) as exc:
        raise FeatxError(f"cache {path} is damaged or not a featx cache ({exc})") from exc
    version = meta.get("schema_version")
    if version is None or int(version) > SCHEMA_VERSION:
        raise FeatxError(f"cache {path} has schema version {version}; this featx reads up to {SCHEMA_VERSION}")
    if not allow_incomplete and (path.name.endswith(PARTIAL_SUFFIX) or not meta.get("complete")):
        raise FeatxError(f"cache {path} is incomplete; run the extraction again to finish it")
    return FeatureSet(path=path, meta=meta, classes=classes, splits=splits)
