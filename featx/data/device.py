"""The device data path (``--decoder device``): decode and preprocess where the backbone runs, in batches.

- :func:`read_raw` (in the loader, per item): a JPEG file stays its compressed bytes; any other file, and an
  in-memory dataset's image, becomes a uint8 ``(3, H, W)`` tensor (RGB, as the exact path converts it).
- :func:`preprocess_batch` (in the main process, per batch): the JPEG bytes of the whole batch are decoded
  on the device in one call (``torchvision.io.decode_jpeg(list, device="cuda")``: nvJPEG on a GPU,
  libjpeg-turbo on the CPU), EXIF orientation is applied on the tensor (the CUDA decoder ignores it), and
  each image goes through the weights' own preset on the device (resize, crop, scale, normalise); the
  results are stacked.

The same code runs on ``device="cpu"``, where a test checks it against the exact PIL path (cosine >= 0.999
for MobileNetV2 IMAGENET1K_V1). On a GPU the host then only reads files; uint8 data crosses the bus, not
float32 crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

__all__ = ["RawImage", "read_raw", "raw_from_pil", "preprocess_batch", "orient"]

_EXIF_ORIENTATION = 0x0112


@dataclass
class RawImage:
    """One item on its way to the device: JPEG bytes (``jpeg=True``, 1-D uint8) or a uint8 ``(3, H, W)`` image."""

    data: torch.Tensor
    jpeg: bool
    orientation: int = 1


def raw_from_pil(img: Image.Image, rgb) -> RawImage:
    """A decoded PIL image (already upright) -> uint8 ``(3, H, W)``; ``rgb`` converts it as the exact path
    does (:class:`featx.data.decoding.RGBTransform` with an identity inside)."""
    from torchvision.transforms.functional import pil_to_tensor

    return RawImage(pil_to_tensor(rgb(img)), jpeg=False)


def read_raw(path, rgb, open_pil) -> RawImage:
    """A file as :class:`RawImage`: baseline/progressive 8-bit RGB or grayscale JPEGs stay compressed (decoded
    on the device later); everything else is decoded here by ``open_pil`` (the exact path's opener)."""
    with open(path, "rb") as f, Image.open(f) as img:  # PIL reads the header only: its bomb limit applies
        if img.format == "JPEG" and img.mode in ("RGB", "L") and getattr(img, "n_frames", 1) == 1:
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            f.seek(0)
            return RawImage(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8), jpeg=True,
                            orientation=orientation)
    return raw_from_pil(open_pil(path), rgb)


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a ``(C, H, W)`` tensor, as ``PIL.ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1, -2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(img, -1, dims=(-2, -1))
    if orientation == 7:
        return img.transpose(-2, -1).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(img, 1, dims=(-2, -1))
    return img


def preprocess_batch(raws: list[RawImage], preset, device: torch.device) -> torch.Tensor:
    """Decode (JPEGs, all in one call) and preprocess a batch on ``device``; ``(N, 3, crop, crop)`` float32."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images: list[torch.Tensor | None] = [None] * len(raws)
    jpegs = [i for i, r in enumerate(raws) if r.jpeg]
    if jpegs:
        decoded = decode_jpeg([raws[i].data for i in jpegs], mode=ImageReadMode.RGB, device=device)
        for i, img in zip(jpegs, decoded):
            images[i] = orient(img, raws[i].orientation)
    for i, r in enumerate(raws):
        if not r.jpeg:
            images[i] = r.data.to(device, non_blocking=True)
    return torch.stack([preset(img) for img in images])
