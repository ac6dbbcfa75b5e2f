"""Copies and look-alikes: which items are the same picture, which only look alike, and which cross splits.

- **Copies** (the same picture re-encoded, resized or slightly cropped): candidate pairs registered on the
  pixels (:mod:`featx.audit.copies`; the embedding's near neighbours are candidates too), grouped; pairs
  across train/test, train/val and val/test are counted separately as *leakage*. Without the images (a moved
  dataset, no pixel check) only identical embeddings (cosine >= :data:`EXACT_THRESHOLD`) count as copies.
- **Look-alikes** (:func:`near_pairs`): other pairs whose embeddings have cosine similarity >=
  :data:`DUPLICATE_THRESHOLD`: distinct pictures of much the same thing, listed for a person to judge.
"""

from __future__ import annotations

import logging

import numpy as np

from ..options import DATASETS_ROOT

__all__ = ["DUPLICATE_THRESHOLD", "EXACT_THRESHOLD", "SPLIT_ORDER", "near_duplicates", "near_pairs", "group_pairs",
           "open_source", "copies_of"]

log = logging.getLogger("featx")

#: Cosine similarity at or above which two distinct pictures are reported as look-alikes (docs/audit.md: copies
#: of small images fall well below it, so copies are found on pixels instead).
DUPLICATE_THRESHOLD = 0.95
#: ... and exact duplicates (the same image, decoded and embedded again: equal up to fp32 rounding).
EXACT_THRESHOLD = 0.9999
#: Order of the splits in a leakage key ("train/test").
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def near_duplicates(sims: np.ndarray, idx: np.ndarray, splits: np.ndarray, *, threshold: float = DUPLICATE_THRESHOLD):
    """Pairs ``(i, j, similarity)`` (i < j) above ``threshold`` among the neighbours found, their groups (connected
    components) and the leakage counts."""
    ordered = near_pairs(sims, idx, threshold=threshold)
    return (ordered, *group_pairs(ordered, splits))


def near_pairs(sims: np.ndarray, idx: np.ndarray, *, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, similarity)`` (i < j) above ``threshold`` among the neighbours found, most similar first."""
    pairs = {}
    for i in range(len(sims)):
        for s, j in zip(sims[i], idx[i]):
            if s < threshold:
                break
            a, b = (i, int(j)) if i < j else (int(j), i)
            pairs[(a, b)] = max(pairs.get((a, b), -1.0), float(s))
    return [(a, b, s) for (a, b), s in sorted(pairs.items(), key=lambda kv: -kv[1])]


def group_pairs(pairs, splits: np.ndarray) -> tuple[list[list[int]], dict[str, int]]:
    """The groups (connected components) of pairs ``(i, j, ...)`` and the pairs counted per split pair
    (train/test, train/val, val/test)."""
    parent = {}

    def find(x):
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for a, b, *_ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for a, b, *_ in pairs:
        for x in (a, b):
            groups.setdefault(find(x), [])
            if x not in groups[find(x)]:
                groups[find(x)].append(x)
    leak = {"train/test": 0, "train/val": 0, "val/test": 0}
    for a, b, *_ in pairs:
        key = "/".join(sorted((str(splits[a]), str(splits[b])), key=lambda n: SPLIT_ORDER.get(n, 3)))
        if key in leak:
            leak[key] += 1
    return [sorted(g) for g in groups.values()], leak


def open_source(fs, root: str):
    """The cache's source rebuilt from its record and its ``id -> key`` map, and ``""``; ``(None, None, why)``
    when the source is not readable here."""
    from ..data.layout import source_from_record

    try:
        source = source_from_record(fs.meta.get("source") or {}, root=root)
        keys = {str(i): k for items in source.splits().values() for i, k in zip(items.ids, items.keys)}
    except Exception as exc:  # moved files, a dataset not here: the report goes without pictures
        return None, None, f"the cache's images cannot be read here ({type(exc).__name__}: {exc})"
    return source, keys, ""


def _pixel_thumbnails(source, keys: dict, ids: list[str], progress=None, quality=None):
    """Grey thumbnails of the cache's items, read from its source (:func:`open_source`); ``quality`` (a
    :class:`featx.audit.quality.QualityStats`) sees every decoded image on the way."""
    from ..data.decoding import decode_scaled
    from ..data.sources import FileSource
    from .copies import SIDE, thumbnails

    missing = [i for i in ids if i not in keys]
    stored: dict[str, tuple[int, int]] = {}

    def open_one(item_id):
        key = keys[item_id]  # a KeyError (an item the source no longer has) is an unreadable item
        if isinstance(source, FileSource):
            img = decode_scaled(key, min_side=2 * SIDE)
            if img is not None:  # decoded at a reduced scale: the size as stored comes from the header
                from PIL import Image

                with Image.open(key) as header:
                    stored[item_id] = header.size
                return img
        return source.open(key)

    inspect = None if quality is None else (lambda n, img: quality.add(n, img, stored.pop(ids[n], None)))
    thumbs, bad = thumbnails(open_one, ids, progress=progress, inspect=inspect)
    return thumbs, bad, (f"{len(missing)} items no longer in the source" if missing else "")


#: Copy pairs whose full pixels are compared for "exact" (identical pixels); more are left undecided.
MAX_EXACT_CHECKS = 5000


def identical_pixels(source, keys: dict, ids: list[str], pairs) -> set:
    """The pairs of ``pairs`` (row indices) whose images, read from the cache's source (:func:`open_source`), decode
    to identical pixels (size, mode and every value): what "exact" means in the audit (a JPEG re-encode is a copy,
    not an exact one)."""
    from hashlib import sha256

    digests: dict[int, str | None] = {}

    def digest(row: int):
        if row not in digests:
            try:
                img = source.open(keys[ids[row]])
                digests[row] = sha256(f"{img.mode}{img.size}".encode() + img.tobytes()).hexdigest()
            except Exception:  # unreadable now: not known to be identical
                digests[row] = None
        return digests[row]

    return {(a, b) for a, b in list(pairs)[:MAX_EXACT_CHECKS] if digest(a) is not None and digest(a) == digest(b)}


def copies_of(fs, ids: list[str], near, *, pixels: bool, threshold: float, root: str = DATASETS_ROOT,
              progress=None, quality=None) -> tuple[dict, dict]:
    """The copy pairs among a cache's items: ``{(a, b): (pixel score, runner-up, identical pixels)}`` found on the
    pixels when the images can be read here (the embedding's ``near`` pairs are candidates too), else the identical
    embeddings (``None`` for each); and the pixel check's record. ``quality`` sees every image read."""
    from .copies import MARGIN, SURE_COPY, find_copies

    source, keys, note = open_source(fs, root) if pixels else (None, None, "not asked for")
    thumbs, bad = (None, [])
    if source is not None:  # the source is listed once: for the thumbnails and for the exact pixels
        thumbs, bad, note = _pixel_thumbnails(source, keys, ids, progress, quality)
    checked = 0
    if thumbs is not None:
        extra = np.array([(a, b) for a, b, _ in near], np.int64).reshape(-1, 2)
        cp, cs, second, checked = find_copies(thumbs, extra_pairs=extra, threshold=threshold, progress=progress)
        same = identical_pixels(source, keys, ids, [(int(a), int(b)) for a, b in cp])
        copies = {(int(a), int(b)): (float(s), float(r), (int(a), int(b)) in same)
                  for (a, b), s, r in zip(cp, cs, second)}
    else:
        log.info(f"note: no pixel check ({note}): only identical embeddings count as copies")
        copies = {(a, b): (None, None, None) for a, b, s in near if s >= EXACT_THRESHOLD}
    check = {"done": thumbs is not None, "note": note, "threshold": threshold, "sure": SURE_COPY, "margin": MARGIN,
             "pairs_checked": checked, "unreadable": [ids[i] for i in bad][:100], "unreadable_count": len(bad)}
    return copies, check
