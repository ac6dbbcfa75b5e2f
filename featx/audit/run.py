"""``featx audit``: what is wrong with a dataset, found through its cached embeddings.

- **Copies** (the same picture re-encoded, resized or slightly cropped): candidate pairs registered on the
  pixels (:mod:`featx.audit.copies`; the embedding's near neighbours are candidates too), grouped; pairs
  across train/test, train/val and val/test are counted separately as *leakage*. Without the images (a moved
  dataset, ``--no-pixels``) only identical embeddings (cosine >= :data:`EXACT_THRESHOLD`) count as copies.
- **Look-alikes** (:func:`near_duplicates`): other pairs whose L2-normalised embeddings have cosine similarity
  >= :data:`DUPLICATE_THRESHOLD`: distinct pictures of much the same thing, listed for a person to judge.
  Blocked exact search (:func:`featx.cache.index.cosine_self_top_k`: one matrix product per block of rows, every core through the
  BLAS), or a FAISS index when the ``faiss`` package is installed and ``--index faiss`` asks for it.
- **Likely label errors**: out-of-fold predicted probabilities of the ``logreg`` head (5-fold CV over the
  labelled train + val rows), ranked by confident learning (Northcutt, Jiang & Chuang 2021) through cleanlab's
  ``find_label_issues`` (the ``audit`` extra); each with the suggested label.
- **Outliers**: mean cosine distance to the :data:`OUTLIER_K` nearest neighbours, flagged above the upper fence
  ``Q3 + 3 IQR`` of its distribution.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import logging
import time

import numpy as np

from ..cache.index import cosine_self_top_k
from ..errors import FeatxError
from ..util import l2_normalise
from ..version import __version__

__all__ = ["DUPLICATE_THRESHOLD", "EXACT_THRESHOLD", "OUTLIER_K", "near_duplicates", "near_pairs", "group_pairs",
           "label_issues", "outliers", "run_audit", "summary_lines", "write_audit_reports", "flagged_rows",
           "write_manifest"]

log = logging.getLogger("featx")

#: Cosine similarity at or above which two distinct pictures are reported as look-alikes (docs/audit.md: copies
#: of small images fall well below it, so copies are found on pixels instead).
DUPLICATE_THRESHOLD = 0.95
#: ... and exact duplicates (the same image, decoded and embedded again: equal up to fp32 rounding).
EXACT_THRESHOLD = 0.9999
#: Neighbours the outlier score averages over.
OUTLIER_K = 10
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


def label_issues(X: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0):
    """Row indices of likely label errors, most likely first, and the out-of-fold predicted class of every row;
    ``None`` when cleanlab is not installed (a one-line note says how to get it)."""
    if importlib.util.find_spec("cleanlab") is None:
        log.info("note: label errors need cleanlab (pip install 'featx[audit]'); that part of the audit is skipped")
        return None, None
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from ..heads.registry import make_head

    counts = np.bincount(y)
    folds = int(min(folds, counts[counts > 0].min()))
    if folds < 2:
        log.info("note: a class has a single labelled item: no cross-validated label check")
        return None, None
    proba = cross_val_predict(make_head("logreg"), X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                              method="predict_proba")
    ranked = find_label_issues(y, proba, return_indices_ranked_by="self_confidence")
    return np.asarray(ranked, dtype=np.int64), proba.argmax(axis=1)


def outliers(sims: np.ndarray, k: int = OUTLIER_K) -> tuple[np.ndarray, np.ndarray, float]:
    """Outlier score (mean cosine distance to the ``k`` nearest neighbours) per row, the flagged rows (most
    isolated first) and the fence they are above."""
    score = 1.0 - sims[:, :k].mean(axis=1) if sims.shape[1] else np.zeros(len(sims))
    q1, q3 = np.percentile(score, [25, 75]) if len(score) else (0.0, 0.0)
    fence = float(q3 + 3 * (q3 - q1))
    flagged = np.flatnonzero(score > fence)
    return score, flagged[np.argsort(-score[flagged])], fence


def _pixel_thumbnails(fs, ids: list[str], root: str, progress=None):
    """Grey thumbnails of the cache's items, read from its recorded source; ``(None, note)`` when the images
    cannot be read here."""
    from ..data.decoding import decode_scaled
    from ..data.sources import FileSource
    from .copies import SIDE, thumbnails

    source, keys, why = _opener(fs, root)
    if source is None:
        return None, [], why
    missing = [i for i in ids if i not in keys]

    def open_one(item_id):
        key = keys[item_id]  # a KeyError (an item the source no longer has) is an unreadable item
        if isinstance(source, FileSource):
            return decode_scaled(key, min_side=2 * SIDE) or source.open(key)
        return source.open(key)

    thumbs, bad = thumbnails(open_one, ids, progress=progress)
    return thumbs, bad, (f"{len(missing)} items no longer in the source" if missing else "")


def run_audit(fs, *, threshold: float = DUPLICATE_THRESHOLD, index: str = "exact", folds: int = 5,
              pixels: bool = True, copy_threshold: float | None = None, root: str = "cache/datasets",
              progress=None) -> dict:
    """Every detector on a cache (:class:`featx.FeatureSet`); the ``audit.json`` record. ``pixels`` checks
    candidate pairs on the images themselves (:mod:`featx.audit.copies`) when the cache's source can be
    read here; without it (or them), only items with identical embeddings count as copies. ``progress(done,
    total, label)`` follows the reading and the registration."""
    from .copies import COPY_THRESHOLD, MARGIN, SURE_COPY, find_copies

    copy_threshold = COPY_THRESHOLD if copy_threshold is None else copy_threshold
    t_all = time.perf_counter()
    X, y, ids, splits = [], [], [], []
    for split in fs.splits:
        view = fs[split]
        X.append(view.X)
        y.append(view.y)
        ids += [str(i) for i in view.ids]
        splits += [split] * len(view)
    X, y, splits = np.concatenate(X), np.concatenate(y), np.array(splits)
    if len(X) < 3:
        raise FeatxError(f"{fs.path} has {len(X)} rows: too few to audit")
    t0 = time.perf_counter()
    sims, nn = cosine_self_top_k(X, max(OUTLIER_K, 10), index=index)
    search_s = time.perf_counter() - t0
    near = near_pairs(sims, nn, threshold=min(threshold, EXACT_THRESHOLD))
    names = list(fs.classes)
    norms = np.maximum(np.linalg.norm(X, axis=1), 1e-12)  # a pair's cosine below (l2_normalise's, without a copy)

    t0 = time.perf_counter()
    pixel_note, copies = "", {}  # (a, b) -> (pixel score, runner-up score)
    thumbs, bad = None, []
    if pixels:
        thumbs, bad, pixel_note = _pixel_thumbnails(fs, ids, root, progress)
    else:
        pixel_note = "not asked for (--no-pixels)"
    checked = 0
    if thumbs is not None:
        extra = np.array([(a, b) for a, b, _ in near], np.int64).reshape(-1, 2)
        cp, cs, second, checked = find_copies(thumbs, extra_pairs=extra, threshold=copy_threshold, progress=progress)
        copies = {(int(a), int(b)): (float(s), float(r)) for (a, b), s, r in zip(cp, cs, second)}
    else:
        log.info(f"note: no pixel check ({pixel_note}): only identical embeddings count as copies")
        copies = {(a, b): (None, None) for a, b, s in near if s >= EXACT_THRESHOLD}
    pixel_s = time.perf_counter() - t0

    def item(i):
        return {"row": int(i), "id": ids[i], "split": str(splits[i]), "label": names[y[i]] if y[i] >= 0 else None}

    def pair(a, b, kind, score=None, second=None):
        cos = float(X[a] @ X[b] / (norms[a] * norms[b]))
        return {"a": item(a), "b": item(b), "kind": kind, "similarity": round(cos, 5),
                "pixel_score": None if score is None else round(score, 5),
                "runner_up": None if second is None else round(second, 5),
                "exact": bool(cos >= EXACT_THRESHOLD or (score is not None and score >= EXACT_THRESHOLD)),
                "leak": bool(splits[a] != splits[b])}

    # most alike first; pairs without a pixel score (identical embeddings) lead
    copy_pairs = sorted(copies, key=lambda ab: (-(2.0 if copies[ab][0] is None else copies[ab][0]), ab))
    look = [(a, b) for a, b, s in near if s >= threshold and (a, b) not in copies]
    dups = [pair(a, b, "copy", *copies[(a, b)]) for a, b in copy_pairs]
    alike = [pair(a, b, "look-alike") for a, b in look]
    groups, leak = group_pairs(copy_pairs, splits)
    _, alike_leak = group_pairs(look, splits)
    t0 = time.perf_counter()
    fit_rows = np.flatnonzero(np.isin(splits, ["train", "val"]) & (y >= 0))
    ranked, predicted = label_issues(X[fit_rows], y[fit_rows], folds=folds) if len(fit_rows) else (None, None)
    label_s = time.perf_counter() - t0
    issues = None
    if ranked is not None:
        issues = [{**item(fit_rows[r]), "suggested": names[predicted[r]]} for r in ranked]
    score, flagged, fence = outliers(sims)
    return {
        "cache": str(fs.path), "cache_key": fs.cache_key, "backbone": fs.meta.get("backbone"),
        "weights": fs.meta.get("weights"), "rows": int(len(X)), "sizes": {s: int((splits == s).sum()) for s in fs.splits},
        "duplicates": {"pairs": dups, "groups": [[item(i) for i in g] for g in groups], "leakage": leak,
                       "exact_pairs": sum(d["exact"] for d in dups),
                       "pixel_check": {"done": thumbs is not None, "note": pixel_note, "threshold": copy_threshold,
                                       "sure": SURE_COPY, "margin": MARGIN,
                                       "pairs_checked": checked, "unreadable": [ids[i] for i in bad][:100],
                                       "unreadable_count": len(bad)},
                       "look_alikes": {"threshold": threshold, "pairs": alike, "leakage": alike_leak},
                       "exact_threshold": EXACT_THRESHOLD},
        "label_issues": issues, "label_check": "cleanlab find_label_issues on 5-fold out-of-fold logreg "
                                               "probabilities (train + val)" if issues is not None else "skipped",
        "outliers": {"k": OUTLIER_K, "fence": round(fence, 5),
                     "items": [{**item(i), "score": round(float(score[i]), 5)} for i in flagged]},
        "seconds": {"search": round(search_s, 2), "pixels": round(pixel_s, 2), "labels": round(label_s, 2),
                    "total": round(time.perf_counter() - t_all, 2)},
        "index": index, "featx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# -- reports and the clean manifest ----------------------------------------------------------------------------

#: Thumbnails shown per section of the HTML report.
THUMBNAILS = 24


def _opener(fs, root: str):
    """The cache's source rebuilt from its record and its ``id -> key`` map, and ``""``; ``(None, None, why)``
    when the source is not readable here."""
    from ..transfer.baselines import source_from_record

    try:
        source = source_from_record(fs.meta.get("source") or {}, root=root)
        keys = {str(i): k for items in source.splits().values() for i, k in zip(items.ids, items.keys)}
    except Exception as exc:  # moved files, a dataset not here: the report goes without pictures
        return None, None, f"the cache's images cannot be read here ({type(exc).__name__}: {exc})"
    return source, keys, ""


def _thumb(source, keys, item_id: str, size: int = 72) -> str:
    import base64
    import io

    from ..data.decoding import to_rgb

    try:
        img = to_rgb(source.open(keys[item_id]))
    except Exception:
        return ""
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def summary_lines(record: dict) -> list[str]:
    d = record["duplicates"]
    leak = d["leakage"]
    px, alike = d["pixel_check"], d["look_alikes"]
    how = (f"the same picture on pixels: registered correlation >= {px['sure']}, or >= {px['threshold']} and "
           f"standing out from the runner-up, {px['pairs_checked']} candidate pairs checked" if px["done"] else f"identical embeddings only; no pixel check: {px['note']}")
    lines = [f"{record['rows']} items ({', '.join(f'{k} {v}' for k, v in record['sizes'].items())}); "
             f"{record['backbone']} {record['weights']} features.",
             f"Copies ({how}): {len(d['pairs'])} pairs in {len(d['groups'])} groups, {d['exact_pairs']} exact; "
             f"leakage: train/test {leak['train/test']}, train/val {leak['train/val']}, val/test {leak['val/test']} "
             f"pairs.",
             f"Look-alikes (embedding cosine >= {alike['threshold']}, not the same picture; for a person to judge): "
             f"{len(alike['pairs'])} pairs, across train/test {alike['leakage']['train/test']}."]
    if px["unreadable_count"]:
        lines.append(f"{px['unreadable_count']} items could not be read for the pixel check (audit.json lists them).")
    if record["label_issues"] is None:
        lines.append("Label errors: not checked (cleanlab is not installed: pip install 'featx[audit]').")
    else:
        lines.append(f"Likely label errors: {len(record['label_issues'])} ({record['label_check']}).")
    o = record["outliers"]
    lines.append(f"Outliers: {len(o['items'])} items whose mean cosine distance to their {o['k']} nearest "
                 f"neighbours is above {o['fence']:.4f} (Q3 + 3 IQR).")
    lines.append(f"Search {record['seconds']['search']} s ({record['index']}), pixel check "
                 f"{record['seconds']['pixels']} s, label check "
                 f"{record['seconds']['labels']} s, total {record['seconds']['total']} s.")
    return lines


def write_audit_reports(out_dir, record: dict, fs, *, root: str = "cache/datasets"):
    """``audit.json``, ``report.md`` and ``report.html`` (with thumbnails of flagged items) in ``out_dir``."""
    import html
    import json

    d = record["duplicates"]
    md = ["# featx audit", "", *(f"- {line}" for line in summary_lines(record)), "",
          "## Copies (most alike first)", "", "| pixel score | cosine | a | b | leak |", "|---|---|---|---|---|"]

    def row(p):
        px = "-" if p["pixel_score"] is None else f"{p['pixel_score']:.4f}"
        return (f"| {px} | {p['similarity']:.4f} | {p['a']['split']}/{p['a']['id']} ({p['a']['label']}) | "
                f"{p['b']['split']}/{p['b']['id']} ({p['b']['label']}) | {'yes' if p['leak'] else ''} |")

    md += [row(p) for p in d["pairs"][:50]]
    alike = d["look_alikes"]["pairs"]
    if alike:
        md += ["", "## Look-alikes (most similar embeddings first; distinct pictures)", "",
               "| pixel score | cosine | a | b | across splits |", "|---|---|---|---|---|"]
        md += [row(p) for p in alike[:50]]
    if record["label_issues"]:
        md += ["", "## Likely label errors (most likely first)", "", "| item | label | suggested |", "|---|---|---|"]
        md += [f"| {i['split']}/{i['id']} | {i['label']} | {i['suggested']} |" for i in record["label_issues"][:50]]
    md += ["", "## Outliers (most isolated first)", "", "| item | label | score |", "|---|---|---|"]
    md += [f"| {i['split']}/{i['id']} | {i['label']} | {i['score']:.4f} |" for i in record["outliers"]["items"][:50]]
    source, keys, why = _opener(fs, root)
    if source is None:
        log.info(f"note: no thumbnails: {why}")
    esc = html.escape

    def card(item: dict, caption: str) -> str:
        data = _thumb(source, keys, item["id"]) if source is not None else ""
        img = f'<img alt="{esc(item["id"])}" src="data:image/png;base64,{data}">' if data else "<div>(no image)</div>"
        return f'<figure class="t">{img}<figcaption>{esc(caption)}</figcaption></figure>'

    def named(i: dict) -> str:
        return f"{i['split']} {i['id']} ({i['label']})"

    def scores(p: dict) -> str:
        px = "" if p["pixel_score"] is None else f"pixels {p['pixel_score']:.4f}, "
        return f"{px}cos {p['similarity']:.4f}{' LEAK' if p['leak'] else ''}"

    def pairs_html(pairs) -> str:
        return "".join(f'<div class="pair">{card(p["a"], named(p["a"]))}{card(p["b"], named(p["b"]))}'
                       f'<span>{esc(scores(p))}</span></div>' for p in pairs[:THUMBNAILS])

    dup_html = pairs_html(d["pairs"])
    alike_html = pairs_html(alike)
    label_html = "".join(card(i, f"{i['id']}: {i['label']} -> {i['suggested']}?")
                         for i in (record["label_issues"] or [])[:THUMBNAILS])
    out_html = "".join(card(i, f"{i['id']} ({i['label']}) {i['score']:.3f}")
                       for i in record["outliers"]["items"][:THUMBNAILS])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>featx audit</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}figure.t{{display:inline-block;margin:4px;
width:120px;vertical-align:top;font-size:11px}}figure.t img{{width:72px;height:72px;object-fit:contain;
image-rendering:pixelated;border:1px solid #ccc}}.pair{{display:inline-block;border:1px solid #ddd;margin:4px;
padding:4px}}.pair span{{display:block;font-size:11px}}</style></head><body>
<h1>featx audit</h1><ul>{''.join(f'<li>{esc(line)}</li>' for line in summary_lines(record))}</ul>
<h2>Copies (the same picture)</h2>{dup_html or '<p>none</p>'}
<h2>Look-alikes (similar embeddings, distinct pictures)</h2>{alike_html or '<p>none</p>'}
<h2>Likely label errors</h2>{label_html or '<p>none</p>'}
<h2>Outliers</h2>{out_html or '<p>none</p>'}
<p>Every flagged item: audit.json and report.md next to this file.</p></body></html>
"""
    from ..report.render import write_files

    return write_files(out_dir, {"audit.json": json.dumps(record, indent=2) + "\n", "report.md": "\n".join(md) + "\n",
                             "report.html": page})


def flagged_rows(record: dict, *, relabel: bool = False) -> tuple[set[str], dict[str, str]]:
    """Ids the clean manifest leaves out, and (with ``relabel``) id -> new label: every near-duplicate but one per
    group (the test copy, else val, else the first), the likely label errors (or their relabelling) and the
    outliers."""
    order = {"test": 0, "val": 1, "train": 2}
    drop: set[str] = set()
    for group in record["duplicates"]["groups"]:
        keep = min(group, key=lambda i: (order.get(i["split"], 3), i["row"]))
        drop |= {i["id"] for i in group if i is not keep}
    new_labels = {}
    for i in record["label_issues"] or []:
        if relabel:
            new_labels[i["id"]] = i["suggested"]
        else:
            drop.add(i["id"])
    drop |= {i["id"] for i in record["outliers"]["items"]}
    return drop, new_labels


def write_manifest(record: dict, fs, target, *, relabel: bool = False, root: str = "cache/datasets") -> tuple[int, int]:
    """A CSV manifest (``path,label,split``; paths relative to the manifest) of the cache's items with the flagged
    ones removed or relabelled; ``featx extract --data`` reads it. Returns (items written, items left out)."""
    import csv
    import os
    from pathlib import Path

    from ..data.sources import FileSource
    from ..util import atomic_write
    from ..transfer.baselines import source_from_record

    source = source_from_record(fs.meta.get("source") or {}, root=root)
    if not isinstance(source, FileSource):
        raise FeatxError(f"a manifest lists image files; this cache's source ({source.describe()['kind']}) has none: "
                         "use the ids in audit.json instead")
    drop, new_labels = flagged_rows(record, relabel=relabel)
    target = Path(target)
    base = target.resolve().parent
    splits = source.splits()
    names = list(source.classes)
    written = 0
    with atomic_write(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for split, items in splits.items():
            for item_id, key, label in zip(items.ids, items.keys, items.labels):
                if str(item_id) in drop:
                    continue
                name = new_labels.get(str(item_id), names[label] if label >= 0 else "")
                w.writerow([os.path.relpath(Path(key).resolve(), base), name, split])
                written += 1
    return written, len(drop)
