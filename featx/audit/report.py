"""``featx audit``'s report: the audit record as one :class:`~featx.report.document.Document` with thumbnails of
flagged items (``audit.json``, ``report.md``, ``report.html``)."""

from __future__ import annotations

import logging

from ..options import DATASETS_ROOT
from ..report.document import Bullets, Card, Document, Figure, Gallery, Only, Pair, Section, Table, write_report
from ..report.plots import png, pyplot, thumbnail
from ..data.decoding import to_rgb
from .duplicates import open_source

__all__ = ["THUMBNAILS", "summary_lines", "audit_document", "write_audit_reports"]

log = logging.getLogger("featx")

#: Thumbnails shown per section of the HTML report; rows per table of the Markdown report.
THUMBNAILS = 24
TABLE_ROWS = 50


def summary_lines(record: dict) -> list[str]:
    d = record["duplicates"]
    leak = d["leakage"]
    px, alike = d["pixel_check"], d["look_alikes"]
    how = (f"the same picture on pixels: registered correlation >= {px['sure']}, or >= {px['threshold']} and "
           f"standing out from the runner-up, {px['pairs_checked']} candidate pairs checked" if px["done"] else f"identical embeddings only; no pixel check: {px['note']}")
    lines = [f"{record['rows']} items ({', '.join(f'{k} {v}' for k, v in record['sizes'].items())}); "
             f"{record['backbone']} {record['weights']} features.",
             f"Copies ({how}): {len(d['pairs'])} pairs in {len(d['groups'])} groups, {d['exact_pairs']} exact "
             f"(identical pixels); "
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
    q = record.get("quality") or {}
    if q.get("computed"):
        counts = ", ".join(f"{name.replace('_', ' ')} {c['count']}"
                           + ("" if c.get("reliable", True) else f" ({_reliability(c['held_out'])})")
                           for name, c in q["checks"].items())
        lines.append(f"Image quality ({q['images']} images; {q['rule']}): {counts}.")
    elif q:
        lines.append(f"Image quality: not checked ({q.get('note')}).")
    o = record["outliers"]
    lines.append(f"Outliers: {len(o['items'])} items whose mean cosine distance to their {o['k']} nearest "
                 f"neighbours is above {o['fence']:.4f} (Q3 + 3 IQR).")
    lines.append(f"Search {record['seconds']['search']} s ({record['index']}), pixel check "
                 f"{record['seconds']['pixels']} s, label check "
                 f"{record['seconds']['labels']} s, total {record['seconds']['total']} s.")
    return lines


def _reliability(h: dict) -> str:
    """``not reliable on held-out photos: recall 0.10 [0.05, 0.20], precision ...``: a quality check's held-out
    verdict with its 95% intervals."""
    parts = ", ".join(f"{m} {h[m]['value']:.2f} [{h[m]['ci'][0]:.2f}, {h[m]['ci'][1]:.2f}]" for m in ("recall", "precision"))
    return f"{h['verdict']} on held-out photos: {parts}"


def _pair_row(p: dict) -> list[str]:
    px = "-" if p["pixel_score"] is None else f"{p['pixel_score']:.4f}"
    cross = p["leak"] if p["kind"] == "copy" else p.get("across_splits", p["leak"])
    return [px, f"{p['similarity']:.4f}", f"{p['a']['split']}/{p['a']['id']} ({p['a']['label']})",
            f"{p['b']['split']}/{p['b']['id']} ({p['b']['label']})",
            ("yes, exact" if p["exact"] else "yes") if cross and p["kind"] == "copy" else "yes" if cross else ""]


def _tag(p: dict) -> str:
    """LEAK only for a copy across splits; a look-alike across splits is for a person to judge."""
    if p["kind"] == "copy":
        return (" EXACT" if p["exact"] else "") + (" LEAK" if p["leak"] else "")
    return " across splits (look-alike)" if p.get("across_splits", p["leak"]) else ""


def audit_document(record: dict, fs, *, root: str = DATASETS_ROOT) -> Document:
    """The ``featx audit`` report of ``record``; thumbnails read from the cache's source when it is readable here."""
    source, keys, why = open_source(fs, root)
    if source is None:
        log.info(f"note: no thumbnails: {why}")

    def card(item: dict, caption: str) -> Card:
        img = None
        if source is not None:
            try:
                img = to_rgb(source.open(keys[item["id"]]))
            except Exception:  # unreadable here: the card says so
                img = None
        return Card(thumbnail(img) if img is not None else "", caption, item["id"])

    def named(i: dict) -> str:
        return f"{i['split']} {i['id']} ({i['label']})"

    def pairs(ps) -> Gallery:
        return Gallery([Pair(card(p["a"], named(p["a"])), card(p["b"], named(p["b"])),
                             ("" if p["pixel_score"] is None else f"pixels {p['pixel_score']:.4f}, ")
                             + f"cos {p['similarity']:.4f}{_tag(p)}") for p in ps[:THUMBNAILS]])

    d = record["duplicates"]
    alike = d["look_alikes"]["pairs"]
    issues = record["label_issues"] or []
    odd = record["outliers"]["items"]
    sections = [
        Section("Copies (the same picture; most alike first)", [
            Only("md", Table(["pixel score", "cosine", "a", "b", "leak"], [_pair_row(p) for p in d["pairs"][:TABLE_ROWS]])),
            Only("html", pairs(d["pairs"]))]),
        Section("Look-alikes (similar embeddings, distinct pictures)", [
            Only("md", Table(["pixel score", "cosine", "a", "b", "across splits"],
                             [_pair_row(p) for p in alike[:TABLE_ROWS]])),
            Only("html", pairs(alike))]),
        Section("Likely label errors (most likely first)", [
            Only("md", Table(["item", "label", "suggested"],
                             [[f"{i['split']}/{i['id']}", i["label"], i["suggested"]] for i in issues[:TABLE_ROWS]])),
            Only("html", Gallery([card(i, f"{i['id']}: {i['label']} -> {i['suggested']}?")
                                  for i in issues[:THUMBNAILS]]))]),
        Section("Outliers (most isolated first)", [
            Only("md", Table(["item", "label", "score"],
                             [[f"{i['split']}/{i['id']}", i["label"], f"{i['score']:.4f}"] for i in odd[:TABLE_ROWS]])),
            Only("html", Gallery([card(i, f"{i['id']} ({i['label']}) {i['score']:.3f}") for i in odd[:THUMBNAILS]]))]),
    ]
    q = record.get("quality") or {}
    for name, check in (q.get("checks") or {}).items() if q.get("computed") else ():
        if check["items"]:  # lowest score (the clearest case) first
            warn = "" if check.get("reliable", True) else f"; {_reliability(check['held_out'])}, for a person to judge"
            sections.append(Section(f"Image quality: {name.replace('_', ' ')} ({check['count']}{warn})", [
                Only("md", Table(["item", "score"], [[f"{i['split']}/{i['id']}", f"{i['score']:.4f}"]
                                                     for i in check["items"][:TABLE_ROWS]])),
                Only("html", Gallery([card(i, f"{i['id']} {i['score']:.3f}") for i in check["items"][:THUMBNAILS]]))]))
    sections.append(Section("Embedding map", [_map_figure(record, fs)]))
    return Document("featx audit", [Bullets(summary_lines(record))], sections, record, "audit.json")


#: Points of the audit report's embedding map (a seeded sample).
MAP_POINTS = 2000


def _map_figure(record: dict, fs) -> Figure:
    """The cache's embeddings on a 2-D map (``featx map``'s projection, a seeded sample), flagged items in colour."""
    from .embedmap import build_map

    m = build_map(fs, sample=MAP_POINTS, audit=record, thumbnails=False)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 7))
    kinds = sorted({p.get("flag", "") for p in m["points"]} - {""})
    plain = [p for p in m["points"] if "flag" not in p]
    ax.scatter([p["x"] for p in plain], [p["y"] for p in plain], s=4, c="#bbbbbb", label="not flagged")
    for k, kind in enumerate(kinds):
        pts = [p for p in m["points"] if p.get("flag") == kind]
        ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], s=14, c=f"C{k}", label=f"{kind} ({len(pts)})")
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(loc="best", fontsize=8)
    sample = f"a seeded sample of {m['n_points']} of {m['n_rows']} rows" if m["sampled"] else f"{m['n_points']} rows"
    return Figure(png(fig), f"The embeddings on a 2-D map ({sample}; {m['method']}), what the audit flagged in colour. "
                            f"`featx map {fs.path.name} --audit audit.json` makes the interactive page, with thumbnails "
                            "and colours by label, split or prediction.")


def write_audit_reports(out_dir, record: dict, fs, *, root: str = DATASETS_ROOT):
    """``audit.json``, ``report.md`` and ``report.html`` (with thumbnails of flagged items) in ``out_dir``."""
    return write_report(out_dir, audit_document(record, fs, root=root))
