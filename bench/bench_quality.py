"""The audit's image-quality checks against planted problems: thresholds chosen on one photo set, recall and
precision measured on another.

Real photo tiles (96x96, overlapping, cut from a photo set), a seeded share of them given one planted problem
each: blurred (Gaussian, radius 3), darkened (x 0.12), lightened (towards white, x 0.1 of the distance), shrunk to
20x20 (odd size), cropped to 96x22 (odd aspect ratio), flattened (one colour plus faint noise: low information), or
turned grayscale. Each check's score (CleanVision's, and featx's edge width for blur, through
``featx.audit.quality``) is computed for every tile.

``--choose``: on scikit-learn's two sample photos, the threshold of each check with the best F1 of planted
against clean tiles (printed, to copy into ``THRESHOLDS``). Default: on eight of scikit-image's colour photos,
never used to choose, the recall and precision at featx's thresholds; then the same photos through
``featx extract`` + ``featx audit`` end to end, which must flag the same items. ``--photos fresh`` (scikit-image's
grey photographs and matplotlib's Grace Hopper) and ``--photos opencv`` (OpenCV's sample photographs, from Debian's
opencv-doc; ``OPENCV_SAMPLES`` names the folder) were kept apart while the blur measure was designed on the first two.

Usage: python bench/bench_quality.py [--choose] [--photos skimage|fresh|opencv] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

#: Colour photographs among OpenCV's samples (renders, logos, charts, paintings, deliberately blurred ones and the
#: second image of a stereo or flow pair left out).
OPENCV_PHOTOS = (("aero1", "jpg"), ("aloeL", "jpg"), ("apple", "jpg"), ("baboon", "jpg"), ("board", "jpg"),
                 ("building", "jpg"), ("butterfly", "jpg"), ("ela_original", "jpg"), ("fruits", "jpg"),
                 ("HappyFish", "jpg"), ("home", "jpg"), ("leuvenA", "jpg"), ("messi5", "jpg"), ("orange", "jpg"),
                 ("rubberwhale1", "png"), ("squirrel_cls", "jpg"), ("stuff", "jpg"), ("graf1", "png"), ("sudoku", "png"))
PROBLEMS = ("blurry", "dark", "light", "odd_size", "odd_aspect_ratio", "low_information", "grayscale")


def photos(which: str) -> list[np.ndarray]:
    if which == "sklearn":
        from sklearn.datasets import load_sample_images

        return list(load_sample_images().images)
    import skimage.data as d

    if which == "opencv":  # OpenCV's sample photographs (Debian's opencv-doc), chosen by name before any was scored
        from PIL import Image

        root = Path(os.environ.get("OPENCV_SAMPLES", "/usr/share/doc/opencv-doc/examples/data"))
        if not root.is_dir():
            raise SystemExit(f"no OpenCV samples at {root}: apt-get download opencv-doc && dpkg-deb -x opencv-doc_*.deb "
                             "DIR, then OPENCV_SAMPLES=DIR/usr/share/doc/opencv-doc/examples/data")
        return [np.asarray(Image.open(root / f"{n}.{ext}").convert("RGB")) for n, ext in OPENCV_PHOTOS]
    if which == "fresh":  # natural photographs neither used to choose nor looked at while designing the blur measure
        import matplotlib
        from PIL import Image

        grey = [np.repeat(getattr(d, n)()[..., None], 3, axis=2)
                for n in ("camera", "moon", "grass", "gravel", "brick", "coins", "cell")]
        hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return grey + [np.asarray(Image.open(hopper).convert("RGB"))]

    return [getattr(d, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                      "immunohistochemistry", "retina", "colorwheel")]


def tiles(images, side: int = 96) -> list[Image.Image]:
    out = []
    for im in images:
        h, w = im.shape[:2]
        for r in range(0, h - side + 1, side // 2):
            for c in range(0, w - side + 1, side // 2):
                t = im[r:r + side, c:c + side, :3]
                if t.std() > 12:  # not already flat: a tile must be a normal picture before planting
                    out.append(Image.fromarray(t))
    return out


def plant(img: Image.Image, problem: str, rng) -> Image.Image:
    if problem == "blurry":
        return img.filter(ImageFilter.GaussianBlur(3))
    if problem == "dark":
        return ImageEnhance.Brightness(img).enhance(0.12)
    if problem == "light":
        a = np.asarray(img, np.float32)
        return Image.fromarray((255 - (255 - a) * 0.1).astype(np.uint8))
    if problem == "odd_size":
        return img.resize((20, 20))
    if problem == "odd_aspect_ratio":
        return img.crop((0, 0, 96, 22))
    if problem == "low_information":
        colour = np.asarray(img, np.float32).reshape(-1, 3).mean(axis=0)
        flat = colour + rng.normal(0, 1.5, (img.height, img.width, 3))
        return Image.fromarray(np.clip(flat, 0, 255).astype(np.uint8))
    if problem == "grayscale":
        return img.convert("L")
    raise ValueError(problem)


def planted_set(which: str, seed: int, share: float = 0.3):
    """The tiles of ``which`` with a seeded ``share`` of them planted, one problem each: (images, {index: problem})."""
    rng = np.random.default_rng(seed)
    pics = tiles(photos(which))
    order = rng.permutation(len(pics))
    n_each = max(3, int(share * len(pics) / len(PROBLEMS)))
    planted = {int(i): problem for k, problem in enumerate(PROBLEMS) for i in order[k * n_each:(k + 1) * n_each]}
    return [plant(p, planted[i], rng) if i in planted else p for i, p in enumerate(pics)], planted


def scores_of(images):
    from featx.audit.quality import QualityStats

    stats = QualityStats()
    for i, img in enumerate(images):
        stats.add(i, img)
    return stats.scores()


def best_threshold(score: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold (flag below it) with the best F1, midway between two scores; and that F1."""
    values = np.unique(score)
    cuts = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values
    best = (0.0, float(cuts[0]))
    for t in cuts:
        flag = score < t
        tp = int((flag & positive).sum())
        f1 = 2 * tp / max(int(flag.sum()) + int(positive.sum()), 1)
        best = max(best, (f1, float(t)))
    return best[1], best[0]


def evaluate(scores, planted: dict, thresholds: dict) -> dict:
    """Recall and precision per check over the clean tiles and the tiles planted with that check's problem (a tile
    planted with another problem -- a flattened tile is also blurry -- is counted apart, as ``other_flags``)."""
    rows = {}
    for problem in PROBLEMS:
        positive = np.array([planted.get(i) == problem for i in scores.index])
        other = np.array([planted.get(i) not in (None, problem) for i in scores.index])
        flag_all = (scores[problem] < thresholds[problem]).to_numpy()
        flag = flag_all & ~other
        if problem == "grayscale" and scores.attrs["grayscale_share"] > 0.5:
            flag = np.zeros_like(flag)
        tp = int((flag & positive).sum())
        rows[problem] = {"planted": int(positive.sum()), "flagged": int(flag.sum()), "found": tp,
                         "other_flags": int((flag_all & other).sum()),
                         "recall": round(tp / max(int(positive.sum()), 1), 3),
                         "precision": round(tp / int(flag.sum()), 3) if flag.any() else None,
                         "threshold": thresholds[problem]}
    return rows


def end_to_end(images, planted: dict, thresholds: dict) -> dict:
    """The same tiles through featx extract + featx audit: which items the audit flags per check."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for i, img in enumerate(images):
            (root / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
            img.save(root / f"class{i % 2}" / f"tile_{i:04d}.png")
        cache = Path(tmp) / "c.h5"
        featx = [sys.executable, "-m", "featx", "-q"]
        subprocess.run([*featx, "extract", "--data", str(root), "--backbone", "mobilenet_v3_small", "--weights",
                        "none", "--out", str(cache), "--no-progress"], check=True)
        subprocess.run([*featx, "audit", str(cache), "--out", str(Path(tmp) / "a"), "--no-progress"], check=True)
        record = json.loads((Path(tmp) / "a" / "audit.json").read_text())
    return {check: sorted(int(item["id"].split("_")[-1].split(".")[0]) for item in c["items"])
            for check, c in record["quality"]["checks"].items()}


def run(which: str, seed: int, thresholds: dict | None = None) -> dict:
    from featx.audit.quality import THRESHOLDS

    images, planted = planted_set(which, seed)
    scores = scores_of(images)
    chosen = {}
    if thresholds is None:  # choosing: the best F1 per check on this set
        for problem in PROBLEMS:
            keep = np.array([planted.get(i) in (None, problem) for i in scores.index])  # clean + this problem
            positive = np.array([planted.get(i) == problem for i in scores.index])[keep]
            chosen[problem] = round(best_threshold(scores[problem].to_numpy()[keep], positive)[0], 4)
    result = {"photos": which, "seed": seed, "tiles": len(images), "planted": len(planted),
              "checks": evaluate(scores, planted, chosen or thresholds or THRESHOLDS)}
    if chosen:
        result["chosen_thresholds"] = chosen
    return result
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--choose", action="store_true", help="choose the thresholds on scikit-learn's photos")
    p.add_argument("--photos", choices=("skimage", "fresh", "opencv"), default="skimage",
                   help="the held-out photos: scikit-image's colour photos, or 'fresh' (scikit-image's grey photographs "
                        "and matplotlib's Grace Hopper, kept apart while the blur measure was designed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from featx.audit.quality import THRESHOLDS

    record = run("sklearn", args.seed) if args.choose else run(args.photos, args.seed, THRESHOLDS)
    if not args.choose:  # the same draw end to end: the audit must flag what the scores say
        images, planted = planted_set(args.photos, args.seed)
        flagged = end_to_end(images, planted, THRESHOLDS)
        record["end_to_end_agrees"] = all(
            flagged[c] == sorted(i for i, s in scores_of(images)[c].items() if s < THRESHOLDS[c])
            for c in PROBLEMS if c != "grayscale")
    out = args.out or Path(f"bench/results/quality-{record['photos']}-{args.seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['tiles']} tiles of the {record['photos']} photos, {record['planted']} planted"
          + (f"; chosen thresholds {record['chosen_thresholds']}" if "chosen_thresholds" in record else "")
          + (f"; end to end agrees: {record['end_to_end_agrees']}" if "end_to_end_agrees" in record else ""))
    print("| check | threshold | planted | flagged | found | recall | precision |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in record["checks"].items():
        print(f"| {name} | {r['threshold']} | {r['planted']} | {r['flagged']} | {r['found']} | {r['recall']:.2f} | "
              f"{'-' if r['precision'] is None else format(r['precision'], '.2f')} |")
    return record


if __name__ == "__main__":
    main()
