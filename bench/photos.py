"""Camera-sized test photos made from real photo content (scikit-learn's sample photos).

12 MP JPEGs (4032x3024, quality 92, 2-5 MB) as phones write them: a real photo (``china.jpg`` /
``flower.jpg``, 640x427) cropped, flipped and upscaled (Lanczos), plus real high-frequency detail -- the
same photo shrunk and tiled at a random scale, blended in, and sensor-like noise -- so the entropy
decoder has a camera file's amount of work. ImageNet-sized JPEGs (500x375) come from the same content.
Generated once into a folder (``bench/data/`` is git-ignored); the tests use the same generator, small.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["camera_photo", "make_photos"]


def _sources() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a) for a in load_sample_images().images]


def camera_photo(rng: np.random.Generator, size=(4032, 3024), sources=None) -> Image.Image:
    """One photo of ``size`` (width, height) with real content and camera-like detail."""
    src = (sources or _sources())[int(rng.integers(2))]
    w, h = src.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = src.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    base = np.asarray(img.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    tile = int(rng.integers(48, 160))
    small = np.asarray(src.resize((tile, max(8, tile * h // w)), Image.Resampling.LANCZOS), dtype=np.float32)
    reps = (size[1] // small.shape[0] + 1, size[0] // small.shape[1] + 1, 1)
    texture = np.tile(small - small.mean(axis=(0, 1)), reps)[: size[1], : size[0]]
    noise = rng.normal(0, 5.0, base.shape).astype(np.float32)
    out = np.clip(base + 0.18 * texture + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


#: JPEG encodings other than the default (baseline, quality 92, PIL's 4:2:0), for the decoders' robustness check:
#: name -> (quality, progressive, subsampling (0 = 4:4:4, 2 = 4:2:0), EXIF orientation or None).
ENCODINGS = {
    "default": (92, False, None, None),
    "progressive": (92, True, None, None),
    "q75-420": (75, False, 2, None),
    "q97-444": (97, False, 0, None),
    "exif-rotated": (92, False, None, 6),
}


def make_photos(folder: str | Path, n: int, *, size=(4032, 3024), quality: int = 92, seed: int = 0,
                classes: int = 2, distinct: int = 0, encoding: str = "default") -> Path:
    """``folder/<class>/photo_XXX.jpg``: ``n`` photos, made once (existing files are kept). With ``distinct``, only
    that many are made and the others are copies of them (thousands of files per benchmark row, each decoded
    like any file, without making thousands of photos first; copies, not hard links, which featx reads once)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    sources = _sources()
    made = n if distinct <= 0 else min(n, distinct)
    for i in range(made):
        target = folder / f"class{i % classes}" / f"photo_{i:03d}.jpg"
        photo = camera_photo(rng, size, sources)  # drawn even when the file exists: the same photos every time
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp.jpg")
        q, progressive, subsampling, orientation = ENCODINGS[encoding]
        options = {"quality": q if encoding != "default" else quality, "progressive": progressive}
        if subsampling is not None:
            options["subsampling"] = subsampling
        if orientation is not None:  # stored sideways with the tag that says so, as phones do
            exif = Image.Exif()
            exif[0x0112] = orientation
            photo = photo.transpose(Image.Transpose.ROTATE_90)
            options["exif"] = exif.tobytes()
        photo.save(tmp, **options)
        tmp.rename(target)
    for i in range(made, n):  # the others: copies of the distinct ones
        target = folder / f"class{i % classes}" / f"photo_{i:05d}.jpg"
        if not target.exists():
            first = folder / f"class{(i % made) % classes}" / f"photo_{i % made:03d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(first, target)
    return folder
