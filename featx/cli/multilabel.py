"""``featx fit`` and ``featx grid`` on a multi-label cache (a manifest with a ``labels`` column): mAP, micro/macro F1,
per-label AP, thresholds chosen on val; and the commands that take single-label caches only, said in one line."""

from __future__ import annotations

from pathlib import Path

from ..errors import FeatxUsageError
from .base import echo

__all__ = ["fit_multilabel_cmd", "grid_multilabel_cmd", "single_label_only"]


def single_label_only(thing, command: str) -> None:
    """A usage error when ``thing`` (a cache's :class:`~featx.cache.store.FeatureSet`, a cache path, or a data
    source) is multi-label and ``command`` takes single-label data only."""
    if isinstance(thing, (str, Path)):
        from ..cache.store import open_features

        thing = open_features(thing)
    if hasattr(thing, "splits") and callable(thing.splits):  # a source: its manifest says, once read
        thing.splits()
        where = getattr(thing, "manifest", thing.name)
    else:
        where = thing.path
    if getattr(thing, "multilabel", False):
        raise FeatxUsageError(f"{where} is multi-label (several labels per image): {command} takes single-label data "
                              "only; featx extract, fit, grid, predict and export-model take multi-label data")


def _table(metrics: dict) -> None:
    from ..probe.multilabel import ML_METRICS

    echo(f"{'split':<6} {'n':>6} " + " ".join(f"{m:>10}" for m in ML_METRICS))
    for split, m in metrics.items():
        if m:
            echo(f"{split:<6} {m['n']:>6} " + " ".join(f"{m[k]:>10.4f}" for k in ML_METRICS))


def fit_multilabel_cmd(fs, head_name: str, params: dict, out, tune: bool, ignored: list[str]) -> None:
    from ..probe.multilabel import fit_multilabel

    for what in ignored:
        echo(f"featx: note: {what} is for single-label caches: not used here", err=True)
    r = fit_multilabel(head_name, params, fs, out=out, do_tune=tune)
    t = r["tuning"]
    if t:
        echo(f"tuned {t['param']} on val mAP: {t['chosen']:g} of {len(t['values'])} values (val mAP {t['score']:.4f}; "
             f"{t['seconds']:.1f} s)")
    echo(f"{head_name} (multi-label, one-vs-rest over {len(fs.classes)} labels{'' if head_name != 'knn' else ': k-NN votes'}"
         f"): fit {r['seconds']:.1f} s on {r['n_train']} rows")
    _table(r["metrics"])
    ml = r["multilabel"]
    echo(f"thresholds ({ml['score']}) chosen on {ml['chosen_on']}: "
         + ", ".join(f"{c} {t:.3g}" for c, t in zip(fs.classes, ml["thresholds"])))
    test = r["metrics"].get("test") or {}
    if test.get("per_label_ap"):
        worst = sorted(test["per_label_ap"].items(), key=lambda kv: kv[1])[:5]
        echo("test AP, lowest first: " + ", ".join(f"{c} {ap:.3f}" for c, ap in worst))
    echo("calibration and transfer baselines: single-label only (a multi-label head's thresholds are chosen on val)")
    echo(f"saved {r['head_path']} and {r['card_path']}")


def grid_multilabel_cmd(fs, heads: list[str], grids: dict, out_dir: Path) -> list[Path]:
    from ..probe.multilabel import search_multilabel
    from ..report.document import Bullets, Document, Section, Table, write_report

    results = search_multilabel(fs, heads, grids)
    results.update(pipeline=out_dir.name, cache=str(fs.path), cache_key=fs.cache_key, backbone=fs.meta.get("backbone"),
                   weights=fs.meta.get("weights"),
                   classes=list(fs.classes), multilabel=True, sizes={s: len(fs[s]) for s in fs.splits})
    summary = [[r["head"], ", ".join(f"{k}={v}" for k, v in r["best_params"].items()), f"{r['best_score']:.4f}",
                *(f"{r['test'].get(m, float('nan')):.4f}" for m in ("mAP", "micro_f1", "macro_f1"))]
               for r in results["heads"]]
    sections = [Section("Summary", [Table(["head", "best params", "val mAP", "test mAP", "test micro-F1",
                                           "test macro-F1"], summary)])]
    best = next((r for r in results["heads"] if r["head"] == results["best_head"]), None)
    if best and best["test"].get("per_label_ap"):
        sections.append(Section(f"{best['head']}: test AP per label", [Table(
            ["label", "AP"], [[c, f"{ap:.4f}"] for c, ap in sorted(best["test"]["per_label_ap"].items(),
                                                                   key=lambda kv: kv[1])])]))
    for r in results["heads"]:
        keys = list(r["grid"])
        sections.append(Section(f"{r['head']}: sweep ({len(r['sweep'])} points, val mAP)", [Table(
            [*keys, "val mAP", "fit s"], [[*(str(p["params"].get(k)) for k in keys), f"{p['score']:.4f}",
                                           f"{p['fit_seconds']:.2f}"] for p in r["sweep"]])]))
    choice = results.get("choice") or {}
    versus = [f"{results['best_head']} against {h}: val mAP {c['gain']:+.4f} [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]: "
              f"{c['verdict']}" for h, c in (choice.get("against") or {}).items()]
    doc = Document(f"featx grid report (multi-label): {fs.path.name}", [Bullets([
        *(f"best head {results['best_head']}; {v}" for v in versus),
        *([f"rule: {choice['rule']}"] if choice else []),
        f"cache {fs.path.name} ({fs.meta.get('backbone')}), {len(fs.classes)} labels, multi-label",
        "each point fitted on train and scored by val mAP; the best point's test metrics at thresholds chosen on val",
        "not for multi-label: few-shot curves, calibration, transfer baselines"])],
        sections, results, "results.json")
    paths = write_report(out_dir, doc)
    if best:
        echo(f"best head {best['head']} (val mAP {best['best_score']:.4f}): test mAP "
             f"{best['test'].get('mAP', float('nan')):.4f}, micro-F1 {best['test'].get('micro_f1', float('nan')):.4f}")
        for v in versus:
            echo(f"  {v}")
    return paths
