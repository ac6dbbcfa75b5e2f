"""Augmented views of a source's train items (``featx extract --views K``): view ``k`` of every train image is a
random resized crop (a seeded draw per item and view: area 35-100%, aspect 3/4-4/3, resized back to the image's
size) flipped horizontally with probability 1/2, then the backbone's own transform, as DINO's and SimCLR's
linear-probe augmentations; each view is extracted into a cache of its own beside the main one, and ``featx fit``
trains on the train rows and all their views (val and test stay the centre view)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image

from .sources import Source, SplitItems

__all__ = ["AUGMENT", "AugmentedViews", "augment", "view_path"]

#: What a view is (recorded in the view cache's source record, so in its key).
AUGMENT = {"crop": "random resized crop, area 0.35-1, aspect 3/4-4/3, back to the image size",
           "flip": "horizontal, p=0.5", "then": "the backbone's transform"}
_AREA = (0.35, 1.0)
_RATIO = (3 / 4, 4 / 3)


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random resized crop (10 tries, else the whole image) and a coin-flip mirror, at the image's size."""
    w, h = img.size
    box = (0, 0, w, h)
    for _ in range(10):
        area = w * h * rng.uniform(*_AREA)
        ratio = math.exp(rng.uniform(math.log(_RATIO[0]), math.log(_RATIO[1])))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (x, y, x + cw, y + ch)
            break
    out = img.crop(box).resize((w, h), Image.Resampling.BILINEAR)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def view_path(cache, view: int):
    """Where view ``view`` of cache ``x.h5`` is kept: ``x.view<k>.h5`` beside it."""
    from pathlib import Path

    cache = Path(cache)
    return cache.with_name(f"{cache.stem}.view{int(view)}.h5")


class AugmentedViews(Source):
    """View ``view`` (1, 2, ...) of ``base``'s train items, for the cache of key ``of``: ids ``<id>#view<k>``, the
    same labels, each image augmented by a draw seeded with its key, the view and ``seed``."""

    def __init__(self, base: Source, view: int, *, of: str, seed: int = 0):
        self.base, self.view, self.of, self.seed = base, int(view), of, int(seed)
        train = base.splits()["train"]
        self.name, self.classes = base.name, list(base.classes)
        self._splits = {"train": SplitItems(list(train.keys), [f"{i}#view{self.view}" for i in train.ids],
                                            train.labels.copy())}

    def _find(self) -> dict[str, SplitItems]:
        return self._splits

    def open(self, key) -> Image.Image:
        digest = hashlib.sha256(f"{key}|{self.view}|{self.seed}".encode()).digest()
        return augment(self.base.open(key), np.random.default_rng(int.from_bytes(digest[:8], "little")))

    def describe(self) -> dict:
        return {**self.base.describe(), "views": {"view": self.view, "of": self.of, "seed": self.seed, **AUGMENT}}
