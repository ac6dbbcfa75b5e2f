"""Shared fixtures: small real images, a tiny random-init backbone, a small real cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: A small torchvision model with random (seeded) weights: fast and needs no download.
TINY = "mobilenet_v3_small"
CLASSES = ("circle", "square", "stripes")


def draw(kind: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A real RGB picture of one of three shapes, with colour and position noise."""
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.integers(size // 3, 2 * size // 3, 2)
    if kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < (size // 4) ** 2
    elif kind == "square":
        mask = (abs(xx - cx) < size // 5) & (abs(yy - cy) < size // 5)
    else:
        mask = ((xx + int(cx)) // 6) % 2 == 0
    img = rng.integers(0, 60, (size, size, 3))
    img[mask] = rng.integers(150, 255, 3)
    return Image.fromarray(img.astype(np.uint8))


def make_folder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "png" if i % 3 == 0 else "jpg"
            draw(c, rng).save(root / c / f"{c}_{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """``root/<class>/*.jpg|png``: 3 classes x 12 images of 48x48 pixels."""
    return make_folder(tmp_path / "shapes")


@pytest.fixture(scope="session")
def tiny_backbone():
    from featx.backbones import load_backbone

    return load_backbone(TINY, "none")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never download anything."""
    monkeypatch.setenv("FEATX_OFFLINE", "1")


FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION.is_dir() and not os.environ.get("CI"),
    reason="Fashion-MNIST not installed (make install puts it in /usr/share/datasets/fashion-mnist)",
)


@pytest.fixture(scope="session")
def fashion_cache(tmp_path_factory):
    """A real cache: the first 100 Fashion-MNIST images of each split through the embedded
    MobileNetV2 IMAGENET1K_V1 (300 images)."""
    from featx.backbones import load_backbone
    from featx.extract import extract
    from featx.data.layout import make_source

    os.environ["FEATX_OFFLINE"] = "1"
    root = Path("cache/datasets")
    source = make_source("torchvision:FashionMNIST", root=root, limit=100)
    backbone = load_backbone("mobilenet_v2", "IMAGENET1K_V1")
    out = tmp_path_factory.mktemp("fashion") / "fashion.h5"
    result = extract(source, backbone, out=out, progress=False)
    return result.path
