"""Row reuse across caches: a new extraction copies the rows of unchanged items from complete caches made with
the same backbone and settings, and embeds only what is new or changed.

Two caches can share rows when they hold the same features (:meth:`featx.cache.spec.EmbeddingSpec.same_features`:
backbone, weights and their sha256, layer, transform, precision, decoder, dimension): a row is then the embedding
of an image, whatever the item list, split or label around it. A row is reused when the item is the donor row's (the
same id, or the same real file: a manifest written elsewhere names the folder's files with a prefix) and its content
fingerprint (:meth:`featx.data.sources.Source.item_fingerprints`: file size and modification time, a SHA-256 of the
bytes with ``--fingerprint content``, or the dataset for in-memory sources) equals the donor row's. A content
fingerprint also matches a donor row recorded by size and modification time when the donor's own file is still
there, unchanged since, and has the same bytes (so a copied folder reuses the rows of the original). Labels always
come from the current source.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import FeatxError, FeatxUsageError
from .spec import EmbeddingSpec
from .store import open_features

__all__ = ["find_donors", "check_donor", "RowIndex"]

log = logging.getLogger("featx")


def check_donor(path, spec: EmbeddingSpec) -> Path:
    """``path`` as a donor for a run that makes the features ``spec``, or a one-line usage error saying why not."""
    path = Path(path)
    if not path.is_file():
        raise FeatxUsageError(f"{path}: no such cache file", param="reuse")
    try:
        fs = open_features(path)
    except FeatxError as exc:
        raise FeatxUsageError(f"{path}: {exc}", param="reuse") from None
    theirs = EmbeddingSpec.from_attrs(fs.meta)
    if not spec.same_features(theirs):
        raise FeatxUsageError(f"{path}: its rows are other features ({spec.difference(theirs)}); reuse a "
                              "cache of the same backbone, weights, layer, transform, precision and decoder",
                              param="reuse")
    return path


def find_donors(folder, spec: EmbeddingSpec, *, exclude=(), source: dict | None = None) -> list[Path]:
    """Complete caches in ``folder`` of the features ``spec`` (and, when given, of the recorded ``source``), newest
    first (damaged files are passed over)."""
    out = []
    skip = {Path(p).resolve() for p in exclude}
    for path in Path(folder).glob("*.h5") if Path(folder).is_dir() else ():
        if path.resolve() in skip:
            continue
        try:
            meta = open_features(path).meta
        except FeatxError:
            continue
        if spec.same_features(EmbeddingSpec.from_attrs(meta)) and (source is None or meta.get("source") == source):
            out.append(path)
    return sorted(out, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def _legacy_fingerprint(source: dict) -> str:
    """What a row of a cache without fingerprints can be matched by: the dataset, for in-memory sources (their
    items never change; so the default Fashion-MNIST cache of an earlier featx feeds the new one); nothing for
    files, whose content may have changed since (``"?"`` matches no item)."""
    from ..data.sources import in_memory_fingerprint

    return in_memory_fingerprint(source) if source.get("kind") == "torchvision" else "?"


class RowIndex:
    """id -> the donor row holding its features, over one or more donor caches (earlier donors win)."""

    def __init__(self, donors: list[Path]):
        self.donors = [open_features(p) for p in donors]
        self._where: dict[str, tuple[int, str, int, str]] = {}
        for d, fs in enumerate(self.donors):
            for split in fs.splits:
                view = fs[split]
                fps = view.fingerprints
                if len(fps) and not any(fps):  # a cache from before featx recorded fingerprints
                    fps = np.full(len(fps), _legacy_fingerprint(fs.meta.get("source") or {}), dtype=object)
                for row, (item_id, fp) in enumerate(zip(view.ids, fps)):
                    self._where.setdefault(str(item_id), (d, split, row, str(fp)))
        self._files: dict[str, tuple[int, str, int, str]] | None = None  # built on the first id that misses
        self._hashed: dict[str, str] = {}
        self._arrays: dict[tuple[int, str], np.ndarray] = {}
        self.used: dict[int, int] = {}
        #: whether a run that reused nothing says why (the caller decides: not for other datasets' caches)
        self.explain = True

    def __len__(self) -> int:
        return len(self._where)

    def _by_file(self) -> dict:
        """The donor's real file -> its row, for donors whose recorded source names files."""
        from ..data.sources import recorded_file

        if self._files is None:
            self._files = {}
            sources = [fs.meta.get("source") or {} for fs in self.donors]
            for item_id, hit in self._where.items():
                path = recorded_file(sources[hit[0]], item_id)
                if path is not None:
                    self._files.setdefault(path, hit)
        return self._files

    def _same_content(self, hit, fp: str, donor_file: str | None) -> bool:
        """Whether the item with fingerprint ``fp`` has the content of the donor row ``hit``."""
        if hit[3] == fp:
            return True
        if not fp.startswith("sha256:") or hit[3].startswith("sha256:") or donor_file is None:
            return False
        # a content fingerprint against a row recorded by size and mtime: the donor's file, if unchanged since
        try:
            st = os.stat(donor_file)
        except OSError:
            return False
        if f"{st.st_size}-{st.st_mtime_ns}" != hit[3]:
            return False
        if donor_file not in self._hashed:
            from ..data.sources import content_fingerprint

            try:
                self._hashed[donor_file] = content_fingerprint(donor_file)
            except OSError:
                self._hashed[donor_file] = "?"
        return self._hashed[donor_file] == fp

    def match(self, ids, fingerprints, keys=None, file_of=None) -> list[tuple[int, str, int] | None]:
        """For each item, the donor row of the same content (same id, or the same real file: ``file_of(key)`` of its
        key in ``keys``, resolved only for an item whose id has no match; and the same fingerprint), or ``None``
        (new or changed)."""
        from ..data.sources import recorded_file

        out = []
        keys = keys if keys is not None and file_of is not None else [None] * len(ids)
        for item_id, fp, key in zip(ids, fingerprints, keys):
            found = None
            hit = self._where.get(str(item_id))
            if hit is not None:
                src = self.donors[hit[0]].meta.get("source") or {}
                if self._same_content(hit, fp, recorded_file(src, str(item_id)) if fp.startswith("sha256:") else None):
                    found = hit[:3]
            path = file_of(key) if found is None and key is not None else None
            if path is not None:
                hit = self._by_file().get(path)
                if hit is not None and self._same_content(hit, fp, path):
                    found = hit[:3]
            out.append(found)
        return out

    def why_nothing(self, ids, fingerprints) -> str:
        """Why no item of ``ids`` matched a donor row, in a few words (for a note when a reuse copied nothing)."""
        known = [str(i) for i in ids if str(i) in self._where]
        if known:
            return (f"{len(known)} item(s) have a donor row of the same id but another file size or modification "
                    f"time (e.g. {known[0]}; a copied folder gets new modification times: --fingerprint content compares "
                    "the bytes instead), so they were embedded again")
        theirs = next(iter(self._where), "")
        ours = str(next(iter(ids), ""))
        if theirs and ours and (theirs.endswith("/" + ours) or ours.endswith("/" + theirs)):
            return f"ids differ by a folder prefix ({theirs!r} there, {ours!r} here)"
        return f"no id of this data is among theirs (e.g. {theirs!r} there, {ours!r} here)"

    def row(self, where: tuple[int, str, int]) -> np.ndarray:
        d, split, row = where
        if (d, split) not in self._arrays:
            self._arrays[(d, split)] = self.donors[d][split].X  # one read per donor split
        self.used[d] = self.used.get(d, 0) + 1
        return self._arrays[(d, split)][row]

    def provenance(self) -> list[dict]:
        """Which donors gave how many rows (recorded in the new cache as ``reused_from``)."""
        return [{"path": str(self.donors[d].path), "cache_key": self.donors[d].cache_key, "rows": n}
                for d, n in sorted(self.used.items())]
