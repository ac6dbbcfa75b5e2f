"""A growing dataset: incremental extraction (row reuse) against a fresh one, side by side in one run.

Data: N ImageNet-sized JPEGs (500x375, real photo content; bench/photos.py, made once into bench/data/), copied
into a temporary folder and extracted once. Then 1% new files are added and 1% of the files are modified
(re-encoded with other content: new size and mtime), and the changed folder is extracted twice: incrementally
(featx's default, rows of unchanged items copied from the first cache) and fresh (``reuse="none"``).
Printed: both times, their ratio (target <= 0.05 at 1% change), and how many rows were reused and embedded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import camera_photo, make_photos  # noqa: E402

from featx.backbones import load_backbone  # noqa: E402
from featx.data.files import ImageFolderSource  # noqa: E402
from featx.extract import extract  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
SIZE = (500, 375)


def run(n: int, change: float, backbone: str, batch: int) -> dict:
    base = make_photos(DATA / f"imagenet500-{n}-4c", n, size=SIZE, classes=4)
    bb = load_backbone(backbone, "none")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        shutil.copytree(base, folder)
        cache = Path(tmp) / "cache"
        t0 = time.perf_counter()
        first = extract(ImageFolderSource(folder), bb, cache_dir=cache, batch_size=batch, progress=False)
        t_first = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        k = max(1, round(n * change))
        files = sorted(folder.rglob("*.jpg"))
        for i, path in enumerate(rng.choice(files, k, replace=False)):  # modified: new content, new size/mtime
            camera_photo(rng, SIZE).save(path, quality=90)
        for i in range(k):  # new files
            camera_photo(rng, SIZE).save(folder / f"class{i % 4}" / f"new_{i:04d}.jpg", quality=90)
        t0 = time.perf_counter()
        inc = extract(ImageFolderSource(folder), bb, cache_dir=cache, batch_size=batch, progress=False)
        t_inc = time.perf_counter() - t0
        t0 = time.perf_counter()
        fresh = extract(ImageFolderSource(folder), bb, out=Path(tmp) / "fresh.h5", batch_size=batch, progress=False,
                        reuse="none")
        t_fresh = time.perf_counter() - t0
    return {"images": n, "changed": f"{k} new + {k} modified", "backbone": backbone, "first_s": round(t_first, 1),
            "incremental_s": round(t_inc, 1), "fresh_s": round(t_fresh, 1),
            "incremental_over_fresh": round(t_inc / t_fresh, 4), "reused": inc.n_reused, "embedded": inc.n_new,
            "fresh_embedded": fresh.n_new, "first_cache_items": first.n_items}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--change", type=float, default=0.01, help="fraction of files added, and the same modified")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("bench/results/incremental.json"))
    args = p.parse_args(argv)
    r = run(args.images, args.change, args.backbone, args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    print("| images | change | backbone | incremental (s) | fresh (s) | incremental / fresh | rows reused | embedded |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    print(f"| {r['images']} | {r['changed']} | {r['backbone']} | {r['incremental_s']} | {r['fresh_s']} | "
          f"{r['incremental_over_fresh']:.3f} | {r['reused']} | {r['embedded']} |")


if __name__ == "__main__":
    main()
