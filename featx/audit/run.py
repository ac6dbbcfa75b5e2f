"""``featx audit``: what is wrong with a dataset, found through its cached embeddings.

:func:`run_audit` runs every detector on a cache and returns the ``audit.json`` record:

- copies and look-alikes, and the leakage they make across splits (:mod:`featx.audit.duplicates`, with the pixel
  check of :mod:`featx.audit.copies`); the search is the one blocked top-k of :mod:`featx.cache.index` (or FAISS
  when ``index="faiss"`` asks for it and the package is installed);
- likely label errors and outliers (:mod:`featx.audit.labels`).

:func:`write_manifest` writes the clean manifest (the flagged items left out or relabelled) in the CSV format
``featx extract`` reads (:func:`featx.data.files.write_manifest_csv`); image files are never touched.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time

import numpy as np

from ..cache.index import cosine_self_top_k
from ..errors import FeatxError, FeatxUsageError
from ..options import DATASETS_ROOT, RELABEL_MIN_CONFIDENCE
from ..version import __version__
from .duplicates import DUPLICATE_THRESHOLD, EXACT_THRESHOLD, copies_of, group_pairs, near_pairs
from .labels import OUTLIER_K, label_issues, outliers

__all__ = ["run_audit", "flagged_rows", "check_manifest_target", "write_manifest"]

log = logging.getLogger("featx")


def _rows(fs):
    """Every row of the cache: features, labels, ids and split names, in split order."""
    X, y, ids, splits = [], [], [], []
    for split in fs.splits:
        view = fs[split]
        X.append(view.X)
        y.append(view.y)
        ids += [str(i) for i in view.ids]
        splits += [split] * len(view)
    return np.concatenate(X), np.concatenate(y), ids, np.array(splits)


def run_audit(fs, *, threshold: float = DUPLICATE_THRESHOLD, index: str = "exact", folds: int = 5,
              pixels: bool = True, copy_threshold: float | None = None, root: str = DATASETS_ROOT,
              progress=None) -> dict:
    """Every detector on a cache (:class:`featx.FeatureSet`); the ``audit.json`` record. ``pixels`` checks
    candidate pairs on the images themselves (:mod:`featx.audit.copies`) when the cache's source can be
    read here; without it (or them), only items with identical embeddings count as copies. ``progress(done,
    total, label)`` follows the reading and the registration."""
    from .copies import COPY_THRESHOLD

    copy_threshold = COPY_THRESHOLD if copy_threshold is None else copy_threshold
    t_all = time.perf_counter()
    X, y, ids, splits = _rows(fs)
    if len(X) < 3:
        raise FeatxError(f"{fs.path} has {len(X)} rows: too few to audit")
    t0 = time.perf_counter()
    sims, nn = cosine_self_top_k(X, max(OUTLIER_K, 10), index=index)
    search_s = time.perf_counter() - t0
    near = near_pairs(sims, nn, threshold=min(threshold, EXACT_THRESHOLD))
    t0 = time.perf_counter()
    from .quality import QualityStats, available

    stats = QualityStats() if pixels and available() else None
    copies, pixel_check = copies_of(fs, ids, near, pixels=pixels, threshold=copy_threshold, root=root,
                                    progress=progress, quality=stats)
    quality = (stats.record(ids, splits) if stats is not None and pixel_check["done"] else
               {"computed": False, "note": "needs CleanVision: pip install 'featx[quality]'" if pixels and not
                available() else f"no pixels read ({pixel_check['note'] or 'not asked for'})"})
    pixel_s = time.perf_counter() - t0
    item = _itemiser(ids, splits, y, list(fs.classes))
    duplicates = _duplicates(X, splits, item, copies, near, threshold)
    duplicates["pixel_check"] = pixel_check
    t0 = time.perf_counter()
    fit_rows = np.flatnonzero(np.isin(splits, ["train", "val"]) & (y >= 0))
    ranked, predicted, confidence = (label_issues(X[fit_rows], y[fit_rows], folds=folds) if len(fit_rows)
                                     else (None, None, None))
    label_s = time.perf_counter() - t0
    issues = None if ranked is None else [{**item(fit_rows[r]), "suggested": fs.classes[predicted[r]],
                                           "confidence": round(float(confidence[r]), 4)} for r in ranked]
    score, flagged, fence = outliers(sims)
    return {
        "cache": str(fs.path), "cache_key": fs.cache_key, "backbone": fs.meta.get("backbone"),
        "weights": fs.meta.get("weights"), "rows": int(len(X)), "sizes": {s: int((splits == s).sum()) for s in fs.splits},
        "duplicates": duplicates,
        "quality": quality,
        "label_issues": issues, "label_check": "cleanlab find_label_issues on 5-fold out-of-fold logreg "
                                               "probabilities (train + val)" if issues is not None else "skipped",
        "outliers": {"k": OUTLIER_K, "fence": round(fence, 5),
                     "items": [{**item(i), "score": round(float(score[i]), 5)} for i in flagged]},
        "seconds": {"search": round(search_s, 2), "pixels": round(pixel_s, 2), "labels": round(label_s, 2),
                    "total": round(time.perf_counter() - t_all, 2)},
        "index": index, "featx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _itemiser(ids, splits, y, names):
    def item(i):
        return {"row": int(i), "id": ids[i], "split": str(splits[i]), "label": names[y[i]] if y[i] >= 0 else None}

    return item


def _duplicates(X, splits, item, copies: dict, near, threshold: float) -> dict:
    """The ``duplicates`` record: copy pairs (most alike first; pairs without a pixel score, identical embeddings,
    lead), their groups and leakage, and the look-alikes (embedding pairs above ``threshold`` that are not copies)."""
    norms = np.maximum(np.linalg.norm(X, axis=1), 1e-12)  # a pair's cosine (l2_normalise's, without a copy)

    def pair(a, b, kind, score=None, second=None, identical=None):
        cos = float(X[a] @ X[b] / (norms[a] * norms[b]))
        cross = bool(splits[a] != splits[b])
        return {"a": item(a), "b": item(b), "kind": kind, "similarity": round(cos, 5),
                "pixel_score": None if score is None else round(score, 5),
                "runner_up": None if second is None else round(second, 5),
                "exact": bool(identical),  # identical pixels, decoded: a re-encode is a copy but not exact
                "identical_embeddings": bool(cos >= EXACT_THRESHOLD),
                "leak": cross and kind == "copy", "across_splits": cross}

    copy_pairs = sorted(copies, key=lambda ab: (-(2.0 if copies[ab][0] is None else copies[ab][0]), ab))
    look = [(a, b) for a, b, s in near if s >= threshold and (a, b) not in copies]
    dups = [pair(a, b, "copy", *copies[(a, b)]) for a, b in copy_pairs]
    groups, leak = group_pairs(copy_pairs, splits)
    _, alike_leak = group_pairs(look, splits)
    return {"pairs": dups, "groups": [[item(i) for i in g] for g in groups], "leakage": leak,
            "exact_pairs": sum(d["exact"] for d in dups),
            "look_alikes": {"threshold": threshold, "pairs": [pair(a, b, "look-alike") for a, b in look],
                            "leakage": alike_leak},
            "exact_threshold": EXACT_THRESHOLD}


def flagged_rows(record: dict, *, relabel: bool = False, min_confidence: float = RELABEL_MIN_CONFIDENCE,
                 quality: tuple[str, ...] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """Ids the clean manifest leaves out, each with why (``copy``, ``label``, ``outlier``, ``quality``), and (with
    ``relabel``) id -> new label: every near-duplicate but one per group (the test copy, else val, else the first),
    the likely label errors (relabelled instead when the suggestion's confidence is at least ``min_confidence``), the
    outliers, and the items of the ``quality`` checks named (opt-in, one by one)."""
    order = {"test": 0, "val": 1, "train": 2}
    drop: dict[str, str] = {}
    for group in record["duplicates"]["groups"]:
        keep = min(group, key=lambda i: (order.get(i["split"], 3), i["row"]))
        drop.update({i["id"]: "copy" for i in group if i is not keep})
    new_labels = {}
    for i in record["label_issues"] or []:
        if relabel and i.get("confidence", 0.0) >= min_confidence:
            new_labels[i["id"]] = i["suggested"]
        else:
            drop.setdefault(i["id"], "label")
    for i in record["outliers"]["items"]:
        drop.setdefault(i["id"], "outlier")
    checks = ((record.get("quality") or {}).get("checks")) or {}
    for name in quality:
        for i in (checks.get(name) or {}).get("items") or []:
            drop.setdefault(i["id"], "quality")
    for item_id in drop:  # an item left out is not relabelled
        new_labels.pop(item_id, None)
    return drop, new_labels


def check_manifest_target(fs, target) -> None:
    """A usage error, before any work, when a clean manifest at ``target`` could not be read back: it must list
    image files (the cache's source has them) and stand in their folder or one above it, since ``featx extract``
    reads a manifest's images only inside the manifest's own folder."""
    from pathlib import Path

    record = fs.meta.get("source") or {}
    data = record.get("root") or (str(Path(record["manifest"]).parent) if record.get("manifest") else None)
    if data is None:
        raise FeatxUsageError(f"a manifest lists image files; this cache's source ({record.get('kind')}) has none: "
                              "use the ids in audit.json instead", param="write_manifest")
    if not Path(data).resolve().is_relative_to(Path(target).resolve().parent):
        raise FeatxUsageError(f"{target} would list images outside its folder (they are in {data}), which featx "
                              f"extract does not read: write it in {data} or a folder above it, e.g. "
                              f"{Path(data) / Path(target).name}", param="write_manifest")


def write_manifest(record: dict, fs, target, *, relabel: bool = False, min_confidence: float = RELABEL_MIN_CONFIDENCE,
                   root: str = DATASETS_ROOT, quality: tuple[str, ...] = ()) -> dict:
    """A CSV manifest of the cache's items with the flagged ones removed or relabelled, in the format
    ``featx extract --data`` reads (:func:`featx.data.files.write_manifest_csv`). Returns the counts: ``written``,
    ``left_out`` by reason (``copy``, ``label``, ``outlier``) and ``relabelled``."""
    from ..data.files import write_manifest_csv
    from ..data.layout import source_from_record
    from ..data.sources import FileSource

    source = source_from_record(fs.meta.get("source") or {}, root=root)
    if not isinstance(source, FileSource):
        raise FeatxError(f"a manifest lists image files; this cache's source ({source.describe()['kind']}) has none: "
                         "use the ids in audit.json instead")
    drop, new_labels = flagged_rows(record, relabel=relabel, min_confidence=min_confidence, quality=quality)
    splits = source.splits()  # lists the classes too
    names = list(source.classes)
    audited = {str(i) for split in fs.splits for i in fs[split].ids}  # files added since the extraction: not clean
    rows = [(key, new_labels.get(str(item_id), names[label] if label >= 0 else ""), split)
            for split, items in splits.items()
            for item_id, key, label in zip(items.ids, items.keys, items.labels)
            if str(item_id) in audited and str(item_id) not in drop]
    new = sum(str(i) not in audited for items in splits.values() for i in items.ids)
    if new:
        log.info(f"note: {new} file(s) of the data are newer than the cache and were not audited: the manifest "
                 "leaves them out (extract and audit again to include them)")
    write_manifest_csv(target, rows)
    reasons = {r: sum(1 for why in drop.values() if why == r) for r in ("copy", "label", "outlier", "quality")}
    return {"written": len(rows), "left_out": reasons, "relabelled": len(new_labels)}
