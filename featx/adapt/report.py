"""``featx adapt``'s report: every method's target accuracy and domain distance as one
:class:`~featx.report.document.Document` (``adapt.json``, ``report.md``, ``report.html``)."""

from __future__ import annotations

from pathlib import Path

from ..report.document import Document, Figure, Paragraph, Table, write_report
from ..report.plots import png, pyplot

__all__ = ["adapt_document", "write_adapt_reports"]

def _table(record: dict) -> tuple[list[str], list[list[str]]]:
    header = ["method", "target top-1", "vs source-only (95% CI)", "verdict", "proxy A-distance", "fit s", "what"]
    rows = []
    for r in record["methods"]:
        t = r.get("target")
        gain = (f"{r['gain_over_source_only']:+.4f} ({r['gain_ci'][0]:+.4f} .. {r['gain_ci'][1]:+.4f})"
                if t and "gain_ci" in r else "-")
        rows.append([r["method"], f"{t['top1']:.4f}" if t else "-", gain,
                     {"inconclusive": "can't tell"}.get(r.get("verdict"), r.get("verdict", "-")),
                     f"{r['proxy_a_distance']:.3f}", f"{r['seconds']:.1f}", r["description"]])
    return header, rows


def _warnings(record: dict) -> list[str]:
    return [f"{r['method']} made target accuracy worse than no adaptation beyond the noise "
            f"({r['gain_over_source_only']:+.4f}, 95% CI {r['gain_ci'][0]:+.4f} .. {r['gain_ci'][1]:+.4f})"
            for r in record["methods"] if r.get("worse_than_source_only")]


def _summary(record: dict) -> str:
    c = record["ceiling"]
    parts = [f"Source {record['source']['cache']} ({record['source']['rows']} labelled rows) -> target "
             f"{record['target']['cache']} ({record['target']['rows_for_the_map']} unlabelled rows for the map, "
             f"{record['target']['rows_scored']} scored); head {record['head']}; proxy A-distance before "
             f"adaptation {record['proxy_a_distance_before']:.3f} (0 = indistinguishable domains, 2 = separable)."]
    if record["target_shots"]:
        parts.append(f"{record['target_shots']} labelled target images per class added to training.")
    if c:
        parts.append(f"Ceiling (the head trained on the target's labelled train split): {c['top1']:.4f}.")
    choice = record.get("choice")
    if choice:
        tied = (f" ({', '.join(choice['tied'])} are within one standard error, {choice['se']:.4f}, of the highest "
                f"target top-1: the scored items cannot tell them apart)" if len(choice["tied"]) > 1 else "")
        parts.append(f"Best: {choice['chosen']}{tied}; rule: {choice['rule']}. Choosing by target accuracy uses the "
                     "target's labelled test rows: confirm the choice on images not scored here.")
    return " ".join(parts)


def _figure(record: dict) -> str:
    plt = pyplot()
    rows = record["methods"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [r["method"] for r in rows]
    if all("target" in r for r in rows):
        a1.bar(names, [r["target"]["top1"] for r in rows],
               color=["#c44" if r.get("worse_than_source_only") else "#48a" for r in rows])
        if record["ceiling"]:
            a1.axhline(record["ceiling"]["top1"], color="k", ls="--", label="ceiling (target labels)")
            a1.legend(loc="lower right", fontsize=8)
        a1.set_ylim(0, 1)
        a1.set_ylabel("target top-1")
    a2.bar(names, [r["proxy_a_distance"] for r in rows], color="#888")
    a2.axhline(record["proxy_a_distance_before"], color="k", ls=":", label="before adaptation")
    a2.set_ylim(0, 2)
    a2.set_ylabel("proxy A-distance")
    a2.legend(loc="upper right", fontsize=8)
    return png(fig)


def adapt_document(record: dict) -> Document:
    """The ``featx adapt`` report of ``record`` (``adapt.json``)."""
    header, rows = _table(record)
    intro = [Paragraph(_summary(record)), Table(header, rows),
             Figure(_figure(record), "Target top-1 per method (red: worse than no adaptation) and the proxy "
                                     "A-distance after each map.")]
    return Document("featx adapt", intro, [], record, "adapt.json", warnings=_warnings(record))


def write_adapt_reports(out_dir, record: dict) -> list[Path]:
    """``adapt.json``, ``report.md`` and a self-contained ``report.html`` in ``out_dir``."""
    return write_report(out_dir, adapt_document(record))
