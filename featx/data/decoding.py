"""Decoding images and turning them into a backbone's input.

- :func:`open_image`: the exact path, PIL as torchvision's ImageFolder loader (upright by EXIF).
- :func:`decode_tensor`: ``torchvision.io`` decoding to a uint8 tensor (the ``torchvision`` decoder).
- :func:`decode_scaled`: JPEGs at a reduced DCT scale (the ``scaled`` decoder, for camera photos).
- :class:`RGBTransform`: any PIL image -> 8-bit RGB -> the weights' own preset.
- :class:`Preset`: torchvision's ``ImageClassification`` eval preset rebuilt from public
  ``torchvision.transforms.functional`` calls, for backbones whose weights carry no preset of their
  own (random init, timm configs). Named torchvision weights use ``weights.transforms()`` itself.
- :func:`preprocess_record`: a preset as one JSON record (fields named as timm's ``PretrainedCfg``).
- :func:`image_input`: one item -> input tensor, decoded as the chosen decoder (:data:`featx.options.DECODERS`).
"""

from __future__ import annotations

import importlib
import math
from typing import Callable

from PIL import Image, ImageOps

from ..options import DECODERS

__all__ = ["open_image", "decode_tensor", "decode_scaled", "scaled_size", "scaled_decoding_hint", "resize_target", "RGBTransform", "to_rgb", "CROP_MODES", "Preset", "preprocess_record", "image_input"]


def open_image(path) -> Image.Image:
    """Decode an image file (the first frame of an animation), upright by its EXIF orientation.

    PIL refuses decompression bombs (more than twice ``Image.MAX_IMAGE_PIXELS``, 179 Mpx) when
    opening, before any pixel is decoded; the item is then a recorded skip like any other
    unreadable file.
    """
    with Image.open(path) as img:
        img.load()
        if img.format == "JPEG" and img.getexif().get(_EXIF_ORIENTATION, 1) in (None, 0, 1):
            # an upright JPEG: exif_transpose would copy the whole image anyway (36 MB for a 12 MP photo:
            # 130 -> 110 ms per decode + preprocess on one core), for the same pixels. (Other formats keep
            # the copy: a GIF, say, still needs its closed file after this block.)
            return img
        return ImageOps.exif_transpose(img)


_EXIF_ORIENTATION = 0x0112

#: What torchvision's decoder takes over from PIL with ``--decoder torchvision``: single-frame JPEG, PNG and
#: WebP in 8-bit modes. Everything else (GIF, BMP, TIFF, 16-bit, CMYK) still goes through PIL.
_TV_FORMATS = {"JPEG", "PNG", "WEBP"}
_TV_MODES = {"RGB", "L", "RGBA", "LA", "P"}


def decode_tensor(path, *, min_side: int | None = None):
    """An image file as a ``(3, H, W)`` uint8 tensor decoded by ``torchvision.io`` (libjpeg-turbo / libpng /
    libwebp), upright by its EXIF orientation; ``None`` when it should go through PIL instead.

    PIL reads the header first (cheap, no pixels): its decompression-bomb limit still applies.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_image

    with open(path, "rb") as f, Image.open(f) as img:  # Python opens it: any file name, also non-UTF-8
        if img.format not in _TV_FORMATS or img.mode not in _TV_MODES or getattr(img, "n_frames", 1) > 1:
            return None
        f.seek(0)
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    return decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)


def scaled_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The size to ask libjpeg for so that the short side stays >= ``min_side`` (PIL's ``draft`` then picks
    the smallest of the 1/1, 1/2, 1/4, 1/8 DCT scales that is at least this big)."""
    w, h = size
    s = min(1.0, min_side / min(w, h))
    return max(1, math.ceil(w * s)), max(1, math.ceil(h * s))


def decode_scaled(path, *, min_side: int):
    """A JPEG decoded at the smallest DCT scale whose short side is still >= ``min_side`` (libjpeg-turbo's
    scaled decoding through PIL's ``draft``: fewer IDCT coefficients, far less memory), upright by EXIF.

    Returns ``None`` (the exact path) for other formats and for JPEGs too small to scale down. PIL and
    simplejpeg were measured on 12 MP photos: 50.4 vs 51.5 ms per image with identical pixels (the exact
    decode 140.7 ms), so PIL, already a dependency, does it.
    """
    with Image.open(path) as img:
        if img.format != "JPEG" or min(img.size) < 2 * min_side:
            return None
        img.draft("RGB", scaled_size(img.size, min_side))
        img.load()
        return ImageOps.exif_transpose(img)


def scaled_decoding_hint(paths, transform, *, sample: int = 64, timed: int = 3) -> str | None:
    """After an exact run: how much faster ``--decoder scaled`` would decode its camera-sized JPEGs.

    Reads the headers of up to ``sample`` of ``paths`` (no pixels), counts the JPEGs whose short side
    is >= 4x the transform's resize target, and times the exact and the scaled decode + transform on
    ``timed`` of them. ``None`` when there are none.
    """
    import time

    target = resize_target(transform)
    step = max(1, len(paths) // sample)
    big = []
    for p in list(paths)[::step][:sample]:
        try:
            with Image.open(p) as img:
                if img.format == "JPEG" and min(img.size) >= 4 * target:
                    big.append(p)
        except Exception:  # unreadable files were recorded as skips already
            continue
    if not big:
        return None
    seen = len(list(paths)[::step][:sample])

    def cost(fn) -> float:
        t0 = time.perf_counter()
        for p in big[:timed]:
            fn(p)
        return (time.perf_counter() - t0) / len(big[:timed]) * 1000

    exact = cost(lambda p: transform(open_image(p)))
    fast = cost(lambda p: transform(decode_scaled(p, min_side=2 * target)))
    return (f"note: {len(big)} of {seen} sampled images are JPEGs with a short side >= {4 * target} px; "
            f"`--decoder scaled` decodes them {exact / fast:.1f}x faster (measured on {len(big[:timed])}: "
            f"{exact:.0f} vs {fast:.0f} ms each; features within cosine 0.999 of the exact path)")


class RGBTransform:
    """Converts any PIL image to 8-bit RGB, then applies ``inner``.

    As torchvision's image loader does: grayscale is replicated to 3 channels, palette and CMYK
    images are converted, an alpha channel is dropped. 16- and 32-bit integer images (16-bit PNG,
    TIFF) are scaled to 8 bits by their type's range (PIL's own conversion would clip them white).
    """

    def __init__(self, inner: Callable):
        self.inner = inner

    def __call__(self, img):
        return self.inner(to_rgb(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """The exact path's conversion of any PIL image to 8-bit RGB (see :class:`RGBTransform`), without a preset."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img)
        top = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        img = Image.fromarray((np.clip(arr, 0, top).astype(np.float64) * (255 / top)).round().astype(np.uint8))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


#: How an image becomes the crop (timm's ``crop_mode`` / OpenCLIP's ``resize_mode``): ``center`` resizes the short
#: side and crops the centre (torchvision's and timm's default); ``squash`` resizes both sides to the same size
#: (the aspect ratio is not kept; SigLIP's and some timm weights' own preprocessing), then crops the centre.
CROP_MODES = ("center", "squash")


class Preset:
    """Resize the short side (or, with ``crop_mode="squash"``, both sides), centre-crop, scale to [0, 1], normalise: torchvision's classification eval
    preset, with the same public attributes (``crop_size``, ``resize_size``, ``mean``, ``std``,
    ``interpolation``, ``antialias``) and the same steps, built from ``torchvision.transforms.functional``.

    Takes a PIL image or a uint8 ``(C, H, W)`` tensor. A test checks it against the preset that
    torchvision's weights return, so a change on their side is noticed.
    """

    def __init__(self, *, crop_size: int, resize_size: int = 256, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), interpolation=None, antialias: bool | None = True,
                 crop_mode: str = "center"):
        from torchvision.transforms import InterpolationMode

        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode {crop_mode!r}: one of {', '.join(CROP_MODES)}")

        self.crop_size = [int(crop_size)]
        self.resize_size = [int(resize_size)]
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.interpolation = InterpolationMode(interpolation) if interpolation is not None else InterpolationMode.BILINEAR
        self.antialias = antialias
        self.crop_mode = crop_mode

    def __call__(self, img):
        import torch
        from torchvision.transforms import functional as F

        size = self.resize_size * 2 if self.crop_mode == "squash" else self.resize_size  # squash: both sides
        img = F.resize(img, size, interpolation=self.interpolation, antialias=self.antialias)
        img = F.center_crop(img, self.crop_size)
        if not isinstance(img, torch.Tensor):
            img = F.pil_to_tensor(img)
        img = F.convert_image_dtype(img, torch.float)
        return F.normalize(img, mean=self.mean, std=self.std)

    def __repr__(self) -> str:
        return (f"Preset(crop_size={self.crop_size}, resize_size={self.resize_size}, mean={self.mean}, "
                f"std={self.std}, interpolation={self.interpolation}, crop_mode={self.crop_mode!r})")


def preprocess_record(preset) -> dict:
    """The transform as one record (fields named as timm's ``PretrainedCfg``).

    ``preset`` is a :class:`Preset` or the object ``weights.transforms()`` returns (same public attributes).
    """
    crop = int(preset.crop_size[0])
    resize = int(preset.resize_size[0]) if preset.resize_size else crop
    return {
        "input_size": [3, crop, crop],
        "resize_size": resize,
        "crop_pct": round(crop / resize, 6),
        "crop_mode": getattr(preset, "crop_mode", "center"),
        "interpolation": preset.interpolation.value,
        "antialias": bool(preset.antialias),
        "mean": [float(v) for v in preset.mean],
        "std": [float(v) for v in preset.std],
        "channels": "RGB (grayscale/palette/alpha images converted to RGB)",
    }


def decoder_function(decoder: str) -> Callable | None:
    """The function a decoder declares (``None``: the exact PIL path only)."""
    spec = DECODERS[decoder].function
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def resize_target(transform) -> int:
    """The short-side size a backbone's transform resizes to (``Backbone.transform`` or a preset)."""
    preset = getattr(transform, "inner", transform)
    return int(preset.resize_size[0]) if getattr(preset, "resize_size", None) else int(preset.crop_size[0])


def image_input(key, transform: Callable, decoder: str = "pil", open_pil: Callable = open_image):
    """One image -> a backbone's input tensor (``transform`` is its ``Backbone.transform``), decoded as
    ``decoder`` says (a key of :data:`featx.options.DECODERS`; a decoder function needs ``key`` to be a
    file path); the exact PIL path opens ``key`` with ``open_pil`` (a source's own ``open``)."""
    spec = DECODERS.get(decoder)  # None: "in-memory" (a cache of a dataset that had no files): the exact path
    if spec is not None and spec.on_device:  # one image through the device path's code, here on the CPU
        import torch

        from .device import preprocess_batch, read_raw

        raw = read_raw(key, to_rgb, open_pil)
        return preprocess_batch([raw], transform.inner, torch.device("cpu"))[0]
    decode = decoder_function(decoder) if spec is not None else None
    if decode is not None:
        img = decode(key, min_side=2 * resize_target(transform))
        if img is not None:  # None: a format, mode or size that goes the exact way
            return transform.inner(img) if hasattr(img, "dtype") else transform(img)
    return transform(open_pil(key))
