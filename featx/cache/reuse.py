"""Row reuse across caches: a new extraction copies the rows of unchanged items from complete caches made with
the same backbone and settings, and embeds only what is new or changed.

Two caches can share rows when they hold the same features (:meth:`featx.cache.spec.EmbeddingSpec.same_features`:
backbone, weights and their sha256, layer, transform, precision, decoder, dimension): a row is then the embedding
of an image, whatever the item list, split or label around it. A row is reused when the item's id and its content fingerprint
(:meth:`featx.data.sources.Source.item_fingerprints`: file size and modification time, or the dataset for
in-memory sources) are both equal to the donor row's. Labels always come from the current source.
"""

from __future__ import annotations

import logging
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
        self._arrays: dict[tuple[int, str], np.ndarray] = {}
        self.used: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def match(self, ids, fingerprints) -> list[tuple[int, str, int] | None]:
        """For each item, the donor row with the same id and fingerprint, or ``None`` (new or changed)."""
        out = []
        for item_id, fp in zip(ids, fingerprints):
            hit = self._where.get(str(item_id))
            out.append(hit[:3] if hit is not None and hit[3] == fp else None)
        return out

    def why_nothing(self, ids, fingerprints) -> str:
        """Why no item of ``ids`` matched a donor row, in a few words (for a note when a reuse copied nothing)."""
        known = [str(i) for i in ids if str(i) in self._where]
        if known:
            return (f"{len(known)} item(s) have a donor row of the same id but another file size or modification "
                    f"time (e.g. {known[0]}; a copied folder gets new modification times), so they were embedded again")
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
