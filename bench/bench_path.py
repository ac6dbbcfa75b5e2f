"""The warm-started regularisation path at the head's own tolerance against the path tolerance featx uses
(``featx.probe.search.PATH_TOL``), side by side on one cache: wall time of the path, the chosen point, and the
test probabilities of the head refitted at that point (docs/benchmarks.md, issue 26).

    python bench/bench_path.py CACHE [--head logreg]

The chosen point is refitted at the head's own tolerance either way, so what a user sees (the head, its
probabilities) can only change if the looser path chooses another point.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import featx.probe.search as search
from featx.cache.store import open_features
from featx.heads.registry import HEADS, make_head


def run_path(head: str, fs, tol: float | None) -> dict:
    """The head's whole default path on train, scored on val (CV without one); ``tol=None``: the head's own."""
    saved = search.PATH_TOL
    search.PATH_TOL = tol if tol is not None else 0.0  # 0: never loosened
    try:
        X, y = fs["train"].labelled()
        grid = HEADS[head].default_grid(fs.feature_dim)
        t0 = time.perf_counter()
        sweep, selection = search._select(head, grid, fs, X, y, folds=3, metric="top1", jobs=1)
        seconds = time.perf_counter() - t0
    finally:
        search.PATH_TOL = saved
    best = max(sweep, key=lambda r: r["score"])
    est = make_head(head, best["params"]).fit(X, y)
    Xt, _ = fs["test"].labelled()
    return {"seconds": round(seconds, 2), "selection": selection, "chosen": best["params"],
            "val_score": best["score"], "scores": [r["score"] for r in sweep], "proba": est.predict_proba(Xt)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache")
    p.add_argument("--head", default="logreg")
    args = p.parse_args(argv)
    fs = open_features(args.cache)
    own = make_head(args.head).named_steps["clf"].get_params().get("tol")
    tight = run_path(args.head, fs, None)
    loose = run_path(args.head, fs, search.PATH_TOL)
    diff = float(np.abs(tight["proba"] - loose["proba"]).max())
    out = {"cache": args.cache, "rows": {s: len(fs[s]) for s in fs.splits}, "head": args.head, "own_tol": own,
           "path_tol": search.PATH_TOL, "tight": {k: v for k, v in tight.items() if k != "proba"},
           "loose": {k: v for k, v in loose.items() if k != "proba"}, "max_test_proba_difference": diff,
           "max_val_score_difference": float(np.abs(np.subtract(tight["scores"], loose["scores"])).max())}
    print(json.dumps(out, default=str))
    print(f"| {args.head} path ({len(tight['scores'])} points, {tight['selection']}) | tol | seconds | chosen | "
          f"val top-1 |\n|---|---:|---:|---|---:|")
    for name, r, tol in (("head's own", tight, own), ("featx's path", loose, search.PATH_TOL)):
        print(f"| {name} | {tol:g} | {r['seconds']:.1f} | {r['chosen']} | {r['val_score']:.4f} |")
    print(f"speed-up {tight['seconds'] / max(loose['seconds'], 1e-9):.2f}x; largest difference of a val score along "
          f"the path {out['max_val_score_difference']:.4f}; of a test probability at the chosen point (refitted at "
          f"tol {own:g}) {diff:.2e}")


if __name__ == "__main__":
    main()
