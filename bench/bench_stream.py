"""Caches larger than memory: the streaming linear head and the approximate-neighbour index at 1x, 10x and 100x the
default cache's rows (54,010 train + 10,000 test; synthetic clustered features, 10 classes).

For each size: ``featx fit --head logreg --no-tune --memory-budget 8MB`` in a child process (rows fitted per second
of wall time, its peak resident memory against the train split's size), then ``featx index`` (build time, recall@10
against the exact search, ms per query both ways) and one ``featx neighbors``-style search through it.

Usage: python bench/bench_stream.py [--scales 1,10,100] [--dim 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from featx.cache.writer import FeatureWriter  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
TRAIN, TEST = 54_010, 10_000


def synthetic(path: Path, n_train: int, n_test: int, d: int, k: int = 10, seed: int = 0, latent: int = 16,
              noise: float = 0.3) -> Path:
    """Rows ``centre[y] + z @ P + noise``: class clusters spread over a ``latent``-dimensional subspace, as real
    embeddings have a low intrinsic dimension (isotropic noise in all ``d`` dimensions is the worst case for any
    approximate search: ``latent=d``)."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32) * 0.35
    P = (rng.normal(size=(latent, d)) / np.sqrt(latent)).astype(np.float32)
    attrs = {"cache_key": path.stem, "backbone": "synthetic", "weights": "none", "weights_sha256": "",
             "layer": "penultimate", "transform": {"input_size": [3, 8, 8]}, "source": {"kind": "synthetic"},
             "precision": "fp32", "decoder": "pil"}
    with FeatureWriter(path, attrs=attrs, classes=[f"c{i}" for i in range(k)],
                       split_sizes={"train": n_train, "test": n_test}, feature_dim=d, chunk_rows=4096) as w:
        for split, n in (("train", n_train), ("test", n_test)):
            for lo in range(0, n, 200_000):
                m = min(200_000, n - lo)
                y = rng.integers(0, k, m)
                X = (centres[y] + rng.normal(size=(m, latent)).astype(np.float32) @ P
                     + noise * rng.normal(size=(m, d)).astype(np.float32)).astype(np.float32)
                w.append(split, X, y, [f"{split}/{i}" for i in range(lo, lo + m)])
        w.finalize()
    return path


def child(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS of the child in MiB, its output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "featx", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(out.stdout + out.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024, out.stdout + out.stderr


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="1,10,100")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--latent", type=int, default=16, help="intrinsic dimension of the rows (= --dim: isotropic)")
    p.add_argument("--budget", default="8MB", help="below every train split here: every fit streams")
    p.add_argument("--out", type=Path, default=Path("bench/results/stream.json"))
    args = p.parse_args(argv)
    rows = []
    for scale in (int(s) for s in args.scales.split(",")):
        cache = synthetic(DATA / f"stream-{scale}x-{args.dim}-latent{args.latent}.h5", TRAIN * scale, TEST * scale,
                          args.dim, latent=args.latent)
        train_mib = TRAIN * scale * args.dim * 4 / 2**20
        wall, peak, text = child(["fit", str(cache), "--head", "logreg", "--no-tune", "--no-baselines",
                                  "--memory-budget", args.budget, "-o", str(cache.with_suffix(".logreg.skops"))])
        card = json.loads(cache.with_suffix(".logreg.json").read_text())
        iwall, ipeak, itext = child(["index", str(cache), "--force"])
        rec = json.loads(Path(f"{cache}.faiss.json").read_text())
        rows.append({"scale": scale, "train_rows": TRAIN * scale, "dim": args.dim, "latent": args.latent,
                     "train_mib": round(train_mib),
                     "fit_wall_s": round(wall, 1), "rows_per_s": round(TRAIN * scale / wall),
                     "fit_peak_mib": round(peak), "passes": card["streaming"]["passes"],
                     "test_top1": round(card["metrics"]["test"]["top1"], 4),
                     "index": rec["kind"], "index_build_s": rec["build_seconds"], "recall_at_10": rec["recall_at_10"],
                     "exact_ms": rec["exact_ms_per_query"], "index_ms": rec["index_ms_per_query"],
                     "speedup": rec["speedup"], "index_wall_s": round(iwall, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| train rows | dim | train split MiB | fit wall s | rows/s | peak RSS MiB | L-BFGS passes | test top-1 "
          "| index | build s | recall@10 | exact ms/query | index ms/query | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['train_rows']:,} | {r['dim']} | {r['train_mib']:,} | {r['fit_wall_s']} | {r['rows_per_s']:,} | "
              f"{r['fit_peak_mib']:,} | {r['passes']} | {r['test_top1']} | {r['index']} | {r['index_build_s']} | "
              f"{r['recall_at_10']} | {r['exact_ms']} | {r['index_ms']} | {r['speedup']}x |")
    return rows


if __name__ == "__main__":
    main()
