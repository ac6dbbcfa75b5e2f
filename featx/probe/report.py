"""``featx grid``'s reports: the search results as one :class:`~featx.report.document.Document` (setup, summary
table, baselines, calibration, every sweep, few-shot curves, plots), and ``featx report``'s merged table."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..options import METRICS
from ..report.document import Bullets, Document, Figure, Paragraph, Section, Table, markdown_block, write_report
from ..report.plots import png, pyplot
from .calibration import expected_calibration_error

__all__ = ["grid_document", "write_reports", "merge_results", "render_rows"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _params(p: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in p.items()) or "-"


def _summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for h in results["heads"]:
        t = h["test"]
        rows.append([h["head"], _params(h["best_params"]), f"{h['val_score']:.4f}",
                     *(f"{t.get(m, float('nan')):.4f}" for m in METRICS), f"{h['search_seconds']:.1f}"])
    return rows


SUMMARY_HEADER = ["head", "best params", "val score", *(f"test {m}" for m in METRICS), "search s"]


def _setup_lines(results: dict) -> list[str]:
    sizes = ", ".join(f"{k} {v}" for k, v in results["sizes"].items())
    return [
        f"- pipeline: `{results['pipeline']}`",
        f"- cache: `{results['cache']}` (key `{results['cache_key']}`)",
        f"- backbone: {results['backbone']} weights {results['weights']} ({results['feature_dim']}-d, "
        f"{results['precision']})",
        f"- data: {len(results['classes'])} classes; {sizes}",
        f"- selection: {results['selection']} on {results['metric']}; best point refitted on train+val; test once",
        f"- featx {results['featx_version']}, {results['created']}, total {results['total_seconds']:.1f} s",
    ]


def _calibration_line(results: dict) -> str:
    """The best head's test ECE, before and after temperature scaling ("" before the plots are made)."""
    if "best_head_ece" not in results:
        return ""
    line = f"{results['best_head']}: test ECE {results['best_head_ece']:.4f}"
    if "best_head_ece_calibrated" in results:
        line += (f" before, {results['best_head_ece_calibrated']:.4f} after temperature scaling (T = "
                 f"{results['best_head_temperature']:.3g}, fitted on val; `featx fit` records it in the head's card "
                 "and `featx predict` applies it)")
    elif "best_head_calibration_skipped" in results:
        line += f"; temperature scaling skipped: {results['best_head_calibration_skipped']}"
    return line + "."


def _failed_lines(results: dict) -> list[str]:
    """The heads that failed and the grid changes the data forced, one line each."""
    lines = [f"- **{f['head']} failed**: {f['error']}" for f in results.get("failed", [])]
    return lines + [f"- note: {n}" for n in results.get("notes", [])]


def _transfer_line(results: dict) -> str:
    """The baselines of the best head in one sentence ("" when they were not run)."""
    b = results.get("baselines")
    if not b:
        return ""
    if "skipped" in b:
        return f"Baselines skipped: {b['skipped']}."
    from .verdict import verdict_line

    t = b["transfer"]
    line = verdict_line(t)
    if t["verdict"] == "hurts":
        line = f"**{line}**"
    tuned = t["tuned"]["pretrained"]["param"]
    return (f"{b['head']} on the same {b['n_train']} train / {b['n_test']} test items, its {tuned} "
            f"tuned on each feature set's own train rows: pretrained {b['pretrained']:.4f}, random-init "
            f"{b['random_init']:.4f}, raw pixels {b['raw_pixels']:.4f}. Verdict: {line}. Rule: {t['rule']}.")


def _sweep_figures(results: dict) -> list[tuple[str, str]]:
    plt = pyplot()
    out = []
    for h in results["heads"]:
        for key, values in h["grid"].items():
            if len(values) < 2:
                continue
            xs = list(values)
            best = [max((r["score"] for r in h["sweep"] if r["params"].get(key) == v), default=math.nan) for v in xs]
            fig, ax = plt.subplots(figsize=(5, 3))
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
            if numeric:
                ax.plot(xs, best, marker="o")
                if min(xs) > 0 and max(xs) / min(xs) >= 100:
                    ax.set_xscale("log")
            else:
                ax.plot([str(v) for v in xs], best, marker="o")
            ax.set_xlabel(key)
            ax.set_ylabel(f"val {results['metric']} (best over other params)")
            ax.set_title(h["head"])
            ax.grid(alpha=0.3)
            out.append((f"{h['head']}: score vs {key}", png(fig)))
    return out


def _best_figures(results: dict, best: dict) -> list[tuple[str, str]]:
    from sklearn.metrics import confusion_matrix

    plt = pyplot()

    classes = np.asarray(best["classes"])
    names = results["classes"]
    y, pred = best["y"], best["pred"]
    cm = confusion_matrix(y, pred, labels=classes)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(cm, cmap="Blues")
    if len(classes) <= 20:
        ax.set_xticks(range(len(classes)), [names[c] for c in classes], rotation=90)
        ax.set_yticks(range(len(classes)), [names[c] for c in classes])
        for i, j in itertools.product(range(len(classes)), repeat=2):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7, color="black" if cm[i, j] < cm.max() / 2 else "white")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{best['head']}: test confusion matrix")
    figs = [("confusion matrix", png(fig))]

    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.22 * len(classes))))
    ax.barh([names[c] for c in classes], per_class)
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy")
    ax.set_title(f"{best['head']}: per-class accuracy")
    figs.append(("per-class accuracy", png(fig)))

    ece, bins = expected_calibration_error(best["proba"], y, classes)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    if bins:
        conf, acc, _ = zip(*bins)
        ax.plot(conf, acc, marker="o", label=f"{best['head']}, before (ECE {ece:.3f})")
    title = f"reliability diagram, ECE {ece:.4f}"
    best["ece"] = ece
    if "proba_calibrated" in best:
        ece_t, bins_t = expected_calibration_error(best["proba_calibrated"], y, classes)
        if bins_t:
            conf, acc, _ = zip(*bins_t)
            ax.plot(conf, acc, marker="s", label=f"temperature T={best['temperature']:.3g} (ECE {ece_t:.3f})")
        title = f"reliability diagram: ECE {ece:.4f} before, {ece_t:.4f} after temperature scaling"
        best["ece_calibrated"] = ece_t
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{best['head']}: {best['proba_kind'].split(' (')[0]}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    figs.append((title, png(fig)))
    if "map" in best:
        figs.append(_map_figure(results, best))
    return figs


def _map_figure(results: dict, best: dict) -> tuple[str, str]:
    """The test embeddings on a 2-D map: by true label, and the best head's mistakes."""
    m = best["map"]
    names, xy, y, wrong = results["classes"], m["xy"], m["y"], m["y"] != m["pred"]
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 6))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for k, c in enumerate(np.unique(y)):
        at = y == c
        left.scatter(xy[at, 0], xy[at, 1], s=5, color=cmap(k % cmap.N), label=names[c] if len(names) <= 20 else None)
    if len(names) <= 20:
        left.legend(loc="best", fontsize=7, markerscale=2)
    left.set_title("test items by true label", fontsize=10)
    right.scatter(xy[~wrong, 0], xy[~wrong, 1], s=4, c="#cccccc", label=f"right ({int((~wrong).sum())})")
    right.scatter(xy[wrong, 0], xy[wrong, 1], s=10, c="#d62728", label=f"wrong ({int(wrong.sum())})")
    right.legend(loc="best", fontsize=8, markerscale=2)
    right.set_title(f"{best['head']}: right and wrong on test", fontsize=10)
    for ax in (left, right):
        ax.set_xticks([]), ax.set_yticks([])
    n = len(y)
    sample = f"a seeded sample of {n} of {m['n_rows']} test rows" if n < m["n_rows"] else f"all {n} test rows"
    cache = Path(results.get("cache", "CACHE")).name
    return (f"The test embeddings on a 2-D map ({sample}; {m['method']}): by true label, and where "
            f"{best['head']} is wrong. `featx map {cache} --head-file HEAD` makes the interactive page, with "
            "thumbnails, a gallery and colours by label, split or prediction.", png(fig))


def grid_document(results: dict, figures: list[tuple[str, str]]) -> Document:
    """The grid report: ``results`` (``results.json``) and its plots (``(caption, png)``)."""
    summary = [Table(SUMMARY_HEADER, _summary_rows(results))]
    if _failed_lines(results):
        summary.append(Bullets([line[2:] for line in _failed_lines(results)]))
    choice = results.get("choice")
    if choice:
        tied = (f"{', '.join(choice['tied'])} are tied within one standard error ({choice['se']:.4f}) of the best "
                f"validation score {choice['highest_score']:.4f}, {choice['highest']}'s: the data cannot tell them "
                f"apart. " if len(choice["tied"]) > 1 else "")
        summary.append(Paragraph(f"Best head: **{choice['chosen']}**. {tied}Rule: {choice['rule']}."))
    sections = [Section("Summary", summary)]
    if _transfer_line(results):
        sections.append(Section("Does pretraining help?", [Paragraph(_transfer_line(results))]))
    if _calibration_line(results):
        sections.append(Section("Calibration", [Paragraph(_calibration_line(results))]))
    lay = results.get("layers")
    if lay:
        sections.append(Section(f"Which layers? ({lay['head']}, greedy forward selection on val)", [
            Table(["layers", f"val {results['metric']}"],
                  [[", ".join(t["layers"]), f"{t['score']:.4f}"] for t in lay["trace"]]),
            Paragraph(f"Selected {', '.join(lay['chosen'])}: val {lay['val_score']:.4f}, test top1 "
                      f"{lay['test'].get('top1', float('nan')):.4f}; every layer: val "
                      f"{lay['all_layers']['val_score']:.4f}, test top1 "
                      f"{lay['all_layers']['test'].get('top1', float('nan')):.4f}. Against every layer: "
                      f"**{lay['against_all']['verdict']}** (val gain {lay['against_all']['gain']:+.4f}, one standard "
                      f"error {lay['against_all']['se']:.4f}; rule: {lay['against_all']['rule']}). `featx fit "
                      f"--layers {','.join(lay['chosen'])}` trains on the selected ones.")]))
    if figures:
        sections.append(Section("Plots", [Figure(data, caption) for caption, data in figures]))
    for head, curve in results.get("few_shot", {}).items():
        sections.append(Section(f"{head}: few-shot test top-1", [Table(
            ["shots per class", "mean", "std", "tries"],
            [[str(c["shots"]), f"{c['mean']:.4f}", f"{c['std']:.4f}", str(c["tries"])] for c in curve])]))
    for h in results["heads"]:
        keys = list(h["grid"])
        rows = [[*(_fmt(r["params"].get(k)) for k in keys), f"{r['score']:.4f}", f"{r['fit_seconds']:.2f}"]
                for r in h["sweep"]]
        sections.append(Section(f"{h['head']}: sweep ({len(h['sweep'])} points, {h['selection']})",
                                [Table([*keys, results["metric"], "fit s"], rows)]))
    return Document(f"featx grid report: {results['pipeline']}", [Bullets([line[2:] for line in _setup_lines(results)])],
                    sections, results, "results.json")


def write_reports(out_dir: str | Path, results: dict, best: dict) -> list[Path]:
    """Write results.json, report.md and report.html into ``out_dir``.

    Args:
        results: the search results (see ``featx grid``).
        best: test-set arrays of the best head: ``head``, ``classes``, ``y``, ``pred``, ``proba``, ``proba_kind``.
    """
    figures = _sweep_figures(results) + _best_figures(results, best)
    results = dict(results, best_head=best["head"], best_head_ece=best["ece"],
                   **({"best_head_temperature": best["temperature"], "best_head_ece_calibrated": best["ece_calibrated"]}
                      if "ece_calibrated" in best else {}),
                   **({"best_head_calibration_skipped": best["calibration_skipped"]}
                      if "calibration_skipped" in best else {}),
                   **({"best_head_map": {"points": len(best["map"]["y"]), "of": best["map"]["n_rows"],
                                         "wrong": int((best["map"]["y"] != best["map"]["pred"]).sum()),
                                         "method": best["map"]["method"]}} if "map" in best else {}))
    return write_report(out_dir, grid_document(results, figures))


MERGED_HEADER = ["pipeline", "backbone", "weights", "head", "best params", "val score", *(f"test {m}" for m in METRICS)]


def merge_results(paths) -> list[list[str]]:
    """One row per (results file, head), for comparing pipelines and backbones."""
    rows = []
    for path in paths:
        try:
            results = json.loads(Path(path).read_text(encoding="utf-8"))
            heads = results["heads"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FeatxError(f"{path} is not a featx results.json ({exc})") from None
        if isinstance(results, dict) and results.get("multilabel"):
            raise FeatxError(f"{path} is a multi-label search (mAP, F1): featx report merges single-label searches "
                             "(top-1 ...); its own report.md has its table")
        try:
            for h in heads:
                rows.append([results["pipeline"], results["backbone"], results["weights"], h["head"],
                             _params(h["best_params"]), f"{h['val_score']:.4f}",
                             *(f"{h['test'].get(m, float('nan')):.4f}" for m in METRICS)])
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise FeatxError(f"{path} is not a featx grid results.json (missing {exc})") from None
    return rows


def render_rows(rows, fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(MERGED_HEADER)
        writer.writerows(rows)
        return buf.getvalue()
    return markdown_block(Table(MERGED_HEADER, rows))
