"""Heads on a realistic cache: featx's heads vs scikit-learn's textbook estimator for the same model.

Two caches:
  synthetic - 12,000 train / 3,000 test x 2048 features x 120 classes: the shape of ResNet-50 features
              of Stanford Dogs. Class structure lives in a 128-d latent space mapped to 2048 ReLU
              features with noise (like pooled CNN features: non-negative, correlated, low intrinsic
              dimension); the difficulty is set so a linear probe scores ~0.9, a k-NN ~0.75.
  default   - the default pipeline's cache (Fashion-MNIST, MobileNetV2, 1280-d, 10 classes), when
              `make features` has made it: a stratified 12,000-row sample of train, the full test split.

Each textbook estimator runs in its own process with a time limit (``--limit``): a fit that does not
finish is reported as such, which is itself the result (LinearSVC on 120 classes, exact SVC).
Pairs (featx head -> textbook estimator for the same model, same C where C means the same):
  logreg       -> StandardScaler + LogisticRegression(C, lbfgs)
  svm          -> StandardScaler + LinearSVC(C)            (squared hinge, one-vs-rest)
  rbf-svm      -> StandardScaler + SVC(rbf)                (exact kernel SVM, sklearn defaults)
  knn          -> KNeighborsClassifier(k, cosine, distance-weighted)
  torch-linear -> StandardScaler + LogisticRegression(lbfgs, C of logreg) (the same softmax model)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

HEADS = ("logreg", "svm", "rbf-svm", "knn", "torch-linear")


def synthetic(n_train=12000, n_test=3000, d=2048, k=120, latent=128, sep=0.4, seed=0):
    rng = np.random.default_rng(seed)
    means = sep * rng.standard_normal((k, latent)).astype(np.float32)
    mix = rng.standard_normal((latent, d)).astype(np.float32) / np.float32(np.sqrt(latent))
    offset = 0.5 * rng.standard_normal(d).astype(np.float32)

    def draw(n):
        y = np.arange(n) % k
        rng.shuffle(y)
        z = means[y] + rng.standard_normal((n, latent), dtype=np.float32)
        X = z @ mix + offset + np.float32(0.5) * rng.standard_normal((n, d), dtype=np.float32)
        return np.maximum(X, 0, out=X), y

    (X, y), (Xt, yt) = draw(n_train), draw(n_test)
    return X, y, Xt, yt


def default_cache(path: str, n_train=12000, seed=0):
    from sklearn.model_selection import train_test_split

    from featx.cache.store import open_features

    fs = open_features(path)
    X, y = fs["train"].labelled()
    Xt, yt = fs["test"].labelled()
    if len(y) > n_train:
        X, _, y, _ = train_test_split(X, y, train_size=n_train, stratify=y, random_state=seed)
    return np.ascontiguousarray(X, dtype=np.float32), y, Xt, yt


def load(spec: dict):
    return synthetic() if spec["name"] == "synthetic" else default_cache(spec["path"])


def textbook(head: str):
    """scikit-learn's textbook estimator for the model a featx head fits (C taken from featx's head)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    from featx.heads.registry import make_head

    p = make_head(head).get_params()
    if head in ("logreg", "torch-linear"):
        C = make_head("logreg").get_params()["clf__C"]
        return f"LogisticRegression(C={C})", make_pipeline(StandardScaler(), LogisticRegression(C=C))
    if head == "svm":
        return f"LinearSVC(C={p['clf__C']})", make_pipeline(StandardScaler(), LinearSVC(C=p["clf__C"]))
    if head == "rbf-svm":
        return "SVC(kernel='rbf')", make_pipeline(StandardScaler(), SVC())
    k = p["clf__n_neighbors"]
    return (f"KNeighborsClassifier({k}, cosine)",
            KNeighborsClassifier(k, weights=p["clf__weights"], metric="cosine", algorithm="brute"))


def time_fit(est, X, y, Xt, yt) -> dict:
    t0 = time.perf_counter()
    est.fit(X, y)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc = float((est.predict(Xt) == yt).mean())
    return {"fit_s": round(fit_s, 2), "predict_s": round(time.perf_counter() - t0, 2), "top1": round(acc, 4)}


def _textbook_child(spec, head, conn):
    import warnings

    warnings.simplefilter("ignore")  # ConvergenceWarning is part of the textbook experience
    X, y, Xt, yt = load(spec)
    est = textbook(head)[1]
    conn.send("loaded")
    conn.send(time_fit(est, X, y, Xt, yt))


def run_textbook(spec: dict, head: str, limit: float) -> dict:
    """Fit in a fresh process, killed when the fit and predict take more than ``limit`` seconds."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_textbook_child, args=(spec, head, send))
    proc.start()
    result = None
    if recv.poll(600) and recv.recv() == "loaded" and recv.poll(limit):
        result = recv.recv()
    proc.join(1)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if result is None:
        return {"fit_s": None, "predict_s": None, "top1": None, "note": f"did not finish in {limit:.0f} s"}
    return result


def run(specs, heads, limit: float) -> list[dict]:
    from featx.heads.registry import make_head

    rows = []
    for spec in specs:
        X, y, Xt, yt = load(spec)
        shape = f"{len(y):,} x {X.shape[1]} x {len(np.unique(y))}"
        for head in heads:
            ours = time_fit(make_head(head), X, y, Xt, yt)
            name, _ = textbook(head)
            ref = run_textbook(spec, head, limit)
            row = {"cache": spec["name"], "shape": shape, "head": head, "featx": ours, "textbook": name, "ref": ref}
            if ref["fit_s"]:
                row["fit_speedup"] = round(ref["fit_s"] / max(ours["fit_s"], 1e-3), 1)
                row["top1_diff_points"] = round(100 * (ours["top1"] - ref["top1"]), 2)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows) -> str:
    out = ["| cache | head | featx fit s | featx predict s | featx top-1 | textbook estimator | its fit s | "
           "its top-1 | fit speed-up | top-1 difference (points) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, t = r["featx"], r["ref"]
        its = (f"{t['fit_s']} | {t['top1']:.4f} | {r['fit_speedup']}x | {r['top1_diff_points']:+.2f}"
               if t["fit_s"] else f"{t['note']} | - | > {t['note'].split()[-2]} s / {f['fit_s']} s | -")
        out.append(f"| {r['cache']} {r['shape']} | {r['head']} | {f['fit_s']} | {f['predict_s']} | {f['top1']:.4f} | "
                   f"`{r['textbook']}` | {its} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default=",".join(HEADS))
    p.add_argument("--caches", default="synthetic,default", help="synthetic and/or default")
    p.add_argument("--default-cache", default="auto",
                   help="path of the default pipeline's cache (auto: resolved from pipelines/default.toml)")
    p.add_argument("--limit", type=float, default=45.0, help="seconds a textbook fit may take")
    p.add_argument("--out", type=Path, default=Path("bench/results/heads.json"))
    args = p.parse_args(argv)
    specs = []
    for name in args.caches.split(","):
        if name == "synthetic":
            specs.append({"name": "synthetic"})
        elif name == "default":
            path = args.default_cache
            if path == "auto":
                from featx.pipeline import experiment, resolve_cache
                from featx.errors import FeatxError

                try:
                    path = str(resolve_cache(None, experiment("pipelines/default.toml")))
                except FeatxError as exc:
                    print(f"skipping the default cache: {exc}", file=sys.stderr)
                    continue
            specs.append({"name": "default", "path": path})
        else:
            p.error(f"unknown cache {name!r}")
    rows = run(specs, args.heads.split(","), args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
