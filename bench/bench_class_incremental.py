"""Class-incremental learning on cached features: classes arrive in groups; after each group, accuracy on the test
rows of every class seen so far, for the streaming heads updated with that group's rows only (featx's ``slda`` and
``ncm``, what ``featx fit --update`` does) and for logistic regression refitted from scratch on all rows seen (C
tuned on the val rows of the classes seen, as ``featx fit`` does). Side by side in one run: accuracy and seconds
per step, and whether the streaming LDA updated group by group equals the one fitted on all rows at once.

Data: a real cache (default: Fashion-MNIST through the embedded MobileNetV2, ``--limit`` items of each split,
extracted once into cache/bench/). Streaming LDA's shrinkage is tuned on the first group's val rows only (all a
user has at the start), never on test.

Usage: python bench/bench_class_incremental.py [--cache PATH] [--limit 3000] [--group 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from featx.cache.store import open_features
from featx.heads.incremental import as_classifier_sees, partial_fit_head
from featx.heads.registry import HEADS, SLDA_SHRINKAGE_GRID, make_head
from featx.probe.verdict import verdict_grid


def default_cache(limit: int) -> Path:
    path = Path(f"cache/bench/fashion-mobilenet_v2-limit{limit}.h5")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "featx", "-q", "extract", "--data", "torchvision:FashionMNIST",
                        "--limit", str(limit), "--backbone", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
                        "--out", str(path), "--no-progress"], check=True, env={**os.environ, "FEATX_OFFLINE": "1"})
    return path


def tuned(head: str, X, y, Xv, yv) -> tuple[object, dict, float]:
    """``head`` with its main parameter chosen on (Xv, yv) over featx fit's grid, refitted: (estimator, params, s)."""
    t0 = time.perf_counter()
    name, values = verdict_grid(head, X.shape[1], len(y), points=12)
    best = None
    for v in values:
        est = make_head(head, {name: v}).fit(X, y)
        score = float(np.mean(est.predict(Xv) == yv))
        if best is None or score > best[0]:
            best = (score, v, est)
    return best[2], {name: best[1]}, time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--limit", type=int, default=3000)
    p.add_argument("--group", type=int, default=2, help="classes per group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-logreg", action="store_true", help="only the streaming heads (the refits take longest)")
    args = p.parse_args(argv)
    path = args.cache or default_cache(args.limit)
    fs = open_features(path)
    X, y = fs["train"].labelled()
    Xv, yv = fs["val"].labelled()
    Xt, yt = fs["test"].labelled()
    order = np.random.default_rng(args.seed).permutation(len(fs.classes))
    groups = [np.sort(order[i:i + args.group]) for i in range(0, len(order), args.group)]
    first = np.isin(y, groups[0])
    slda, slda_params, _ = tuned("slda", X[first], y[first], Xv[np.isin(yv, groups[0])], yv[np.isin(yv, groups[0])])
    slda = make_head("slda", slda_params)  # the shrinkage tuned on group 1; the statistics start empty
    retuned = make_head("slda", slda_params)  # the same statistics; its shrinkage chosen again after each group
    ncm = make_head("ncm")
    steps, seen = [], np.zeros(0, dtype=int)
    for g, group in enumerate(groups):
        seen = np.union1d(seen, group)
        rows, test = np.isin(y, group), np.isin(yt, seen)
        row = {"group": g + 1, "classes": [fs.classes[c] for c in group], "seen": len(seen),
               "train_rows": int(np.isin(y, seen).sum()), "test_rows": int(test.sum())}
        for name, head in (("slda", slda), ("slda_retuned", retuned), ("ncm", ncm)):
            t0 = time.perf_counter()
            partial_fit_head(head, X[rows], y[rows])
            if name == "slda_retuned":  # shrinkage needs no old rows: chosen on the val rows of the classes seen
                row["slda_retuned_shrinkage"] = head[-1].tune_shrinkage(
                    as_classifier_sees(head, Xv[np.isin(yv, seen)]), yv[np.isin(yv, seen)], SLDA_SHRINKAGE_GRID)
            row[f"{name}_s"] = round(time.perf_counter() - t0, 3)
            row[name] = round(float(np.mean(head.predict(Xt[test]) == yt[test])), 4)
        old = np.isin(y, seen)
        if not args.skip_logreg:
            logreg, params, s = tuned("logreg", X[old], y[old], Xv[np.isin(yv, seen)], yv[np.isin(yv, seen)])
            row["logreg"] = round(float(np.mean(logreg.predict(Xt[test]) == yt[test])), 4)
            row["logreg_s"], row["logreg_C"] = round(s, 3), params["C"]
        else:
            row["logreg"], row["logreg_s"], row["logreg_C"] = float("nan"), float("nan"), float("nan")
        steps.append(row)
        print(f"group {g + 1}: +{', '.join(row['classes'])} ({len(seen)} classes seen): slda {row['slda']:.4f} "
              f"({row['slda_s']:.2f} s), slda re-tuned {row['slda_retuned']:.4f} (shrinkage "
              f"{row['slda_retuned_shrinkage']:g}), ncm {row['ncm']:.4f} ({row['ncm_s']:.2f} s), logreg from scratch "
              f"{row['logreg']:.4f} ({row['logreg_s']:.2f} s, C={row['logreg_C']:g})", flush=True)
    at_once = make_head("slda", slda_params).fit(X, y)
    same = {"coef_max_rel_diff": float(np.abs(at_once[-1].coef_ - slda[-1].coef_).max()
                                       / np.abs(at_once[-1].coef_).max()),
            "predictions_equal": bool((at_once.predict(Xt) == slda.predict(Xt)).all())}
    total = {k: round(sum(r[f"{k}_s"] for r in steps), 3) for k in ("slda", "slda_retuned", "ncm", "logreg")}
    record = {"cache": str(path), "backbone": fs.meta.get("backbone"), "train_rows": len(y), "test_rows": len(yt),
              "group": args.group, "seed": args.seed, "slda_params": slda_params, "steps": steps,
              "total_seconds": total, "slda_updated_vs_at_once": same,
              "final_gap_points": round(100 * (steps[-1]["logreg"] - steps[-1]["slda"]), 2),
              "head_descriptions": {h: HEADS[h].description for h in ("slda", "ncm", "logreg")}}
    out = Path(f"bench/results/class-incremental-{path.stem}-g{args.group}-s{args.seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print("| group | classes seen | train rows | slda | slda, shrinkage re-tuned | ncm | logreg from scratch | slda s | "
          "ncm s | logreg s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in steps:
        print(f"| {r['group']} | {r['seen']} | {r['train_rows']:,} | {r['slda']:.4f} | {r['slda_retuned']:.4f} "
              f"({r['slda_retuned_shrinkage']:g}) | {r['ncm']:.4f} | {r['logreg']:.4f} | {r['slda_s']:.2f} | "
              f"{r['ncm_s']:.2f} | {r['logreg_s']:.2f} |")
    print(f"total seconds: slda {total['slda']:.2f}, ncm {total['ncm']:.2f}, logreg {total['logreg']:.2f}; final gap "
          f"logreg - slda {record['final_gap_points']:+.2f} points; slda updated vs at once: max relative coef "
          f"difference {same['coef_max_rel_diff']:.2e}, predictions equal: {same['predictions_equal']}")
    return record


if __name__ == "__main__":
    main()
