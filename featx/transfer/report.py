"""``featx rank``'s report: the ranking as one :class:`~featx.report.document.Document` (``rank.json``,
``report.md``, ``report.html``)."""

from __future__ import annotations

from pathlib import Path

from ..report.document import Document, Figure, Paragraph, Table, write_report
from ..report.plots import png, pyplot

__all__ = ["rank_document", "write_rank_reports"]

def _table(record: dict) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "backbone", "weights", "LogME", "probe top-1 (CV)", "k-NN top-1 (CV)", "gain (95% CI)",
              "pretraining"]
    rows = [[str(i), r["backbone"], r["weights"], f"{r['scores']['logme']:.4f}", f"{r['probe_top1']:.4f}",
             f"{r['scores'].get('knn_top1', float('nan')):.4f}",
             f"{t['gain']:+.4f} ({t['ci_low']:+.4f} .. {t['ci_high']:+.4f})", _VERDICT_WORDS[t["verdict"]]]
            for i, r in enumerate(record["candidates"], 1) for t in [r["transfer"]]]
    if any("zeroshot_top1" in r for r in record["candidates"]):  # a candidate with a text tower: no-training score
        header.insert(6, "zero-shot top-1")
        for row, r in zip(rows, record["candidates"]):
            row.insert(6, f"{r['zeroshot_top1']:.4f}" if "zeroshot_top1" in r else "-")
    return header, rows


_VERDICT_WORDS = {"helps": "helps", "hurts": "HURTS", "inconclusive": "can't tell"}


def _warnings(record: dict) -> list[str]:
    from ..probe.verdict import verdict_line

    return [*record.get("warnings", []),
            *(f"{r['backbone']} {r['weights']}: {verdict_line(r['transfer'])}" for r in record["candidates"]
              if r["transfer"]["verdict"] == "hurts")]


def _figure(record: dict) -> str:
    plt = pyplot()
    c = record["candidates"]
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(c) + 2), 3.2))
    names = [f"{r['backbone']}\n{r['weights']}\nLogME {r['scores']['logme']:.3f}" for r in c]
    colours = {"hurts": "#c44", "helps": "#48a"}
    ax.bar(names, [r["probe_top1"] for r in c], color=[colours.get(r["transfer"]["verdict"], "#aaa") for r in c])
    b = record["baselines"]
    ax.axhline(b["random_init"], color="k", ls="--", label=f"random-init {b['random_init']:.3f}")
    ax.axhline(b["raw_pixels"], color="gray", ls=":", label=f"raw pixels {b['raw_pixels']:.3f}")
    ax.set_ylabel("probe top-1 (CV on the sample)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    return png(fig)


def rank_document(record: dict) -> Document:
    """The ``featx rank`` report of ``record`` (``rank.json``)."""
    header, rows = _table(record)
    b = record["baselines"]
    best = record["predicted_best"]
    intro = [Paragraph(f"{record['n_sampled']} labelled train items sampled (stratified, seed "
                       f"{record['sample']['seed']}); {record['folds']}-fold CV of the logreg head; candidates ranked "
                       "by LogME (higher is better)."),
             Table(header, rows),
             Paragraph(f"Baselines on the same items: random-init {b['random_init_backbone']} {b['random_init']:.4f}, "
                       f"raw pixels ({b['raw_pixels_size']}x{b['raw_pixels_size']}) {b['raw_pixels']:.4f}."),
             Paragraph(f"Predicted best: **{best['backbone']} {best['weights']}**."),
             Paragraph("Gain = the candidate's out-of-fold top-1 minus the baseline's (the one with the better tuning "
                       "accuracy) on the same items, with its 95% paired-bootstrap interval; pretraining helps or hurts "
                       "only when the interval excludes 0, otherwise featx can't tell at this sample size "
                       f"(rule: {record['candidates'][0]['transfer']['rule']}). k-NN top-1: a cosine 20-NN probe."),
             Figure(_figure(record), "Probe top-1 per candidate (bars: blue helps, red hurts, grey can't tell) "
                                     "against the baselines (lines); LogME in the labels.")]
    return Document("featx rank", intro, [], record, "rank.json", warnings=_warnings(record))


def write_rank_reports(out_dir, record: dict) -> list[Path]:
    """``rank.json``, ``report.md`` and a self-contained ``report.html`` in ``out_dir``."""
    return write_report(out_dir, rank_document(record))
