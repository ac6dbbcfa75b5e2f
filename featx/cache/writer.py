"""The cache's one writer: append-only, resumable, one process per file (see :mod:`featx.cache.store` for the
schema and the writing protocol)."""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import resource
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from ..errors import FeatxError
from .spec import SCHEMA_VERSION
from .store import _STR, JSON_ATTRS, _decode, partial_path

__all__ = ["FeatureWriter", "lock_path", "write_root"]


def lock_path(path) -> Path:
    """The lock file of the one writer of cache ``path``: ``<path>.partial.lock``."""
    return Path(f"{partial_path(path)}.lock")


def write_root(f: h5py.File, attrs: dict, classes, feature_dim: int) -> None:
    """A new cache file's root: ``attrs`` (JSON fields encoded), the schema and featx version, the creation time,
    the feature dimension, ``complete = False`` and the class names. The one place a cache's root is written
    (:class:`FeatureWriter`, and :func:`featx.cache.shards.join_shards`)."""
    from ..version import __version__

    for key, value in attrs.items():
        f.attrs[key] = json.dumps(value, sort_keys=True) if key in JSON_ATTRS else value
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["featx_version"] = __version__
    f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    f.attrs["feature_dim"] = int(feature_dim)
    f.attrs["complete"] = False
    f.create_dataset("classes", data=np.array(classes, dtype=object), dtype=_STR)


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
        lock = open(lock_path(self.path), "a+")
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
        f = h5py.File(self.partial, "w")
        write_root(f, self.attrs, self.classes, self.feature_dim)
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

    def write_label_matrix(self, split: str, label_sets: dict, n_labels: int) -> None:
        """A multi-label split's ``label_matrix`` (rows x labels, int8: 1 has the label, 0 not, a row of -1
        unlabelled) for the rows written, from ``label_sets`` (item id -> its label indices, ``None`` unlabelled);
        written once every row is, before :meth:`finalize` (a resumed run writes it again)."""
        g = self._file[split]
        ids = [_decode(i) for i in g["ids"][: int(g.attrs["n_committed"])]]
        Y = np.full((len(ids), n_labels), -1, dtype=np.int8)
        for row, item in enumerate(ids):
            labels = label_sets.get(item)
            if labels is not None:
                Y[row] = 0
                Y[row, list(labels)] = 1
        if "label_matrix" in g:
            del g["label_matrix"]
        g.create_dataset("label_matrix", data=Y, fletcher32=True, chunks=(max(1, min(len(ids), 4096)), n_labels)
                         if len(ids) and n_labels else None)
        self._file.flush()

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

