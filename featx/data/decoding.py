"""Decoding images and turning them into a backbone's input.

- :func:`open_image`: the exact path, PIL as torchvision's ImageFolder loader (upright by EXIF).
- :func:`decode_tensor`: ``torchvision.io`` decoding to a uint8 tensor (the ``torchvision`` decoder).
- :class:`RGBTransform`: any PIL image -> 8-bit RGB -> the weights' own preset.
- :class:`Preset`: torchvision's ``ImageClassification`` eval preset rebuilt from public
  ``torchvision.transforms.functional`` calls, for backbones whose weights carry no preset of their
  own (random init, timm configs). Named torchvision weights use ``weights.transforms()`` itself.
- :func:`preprocess_record`: a preset as one JSON record (fields named as timm's ``PretrainedCfg``).
- :func:`image_input`: one item -> input tensor, decoded as the chosen decoder (:data:`featx.options.DECODERS`).
"""

from __future__ import annotations

import importlib
from typing import Callable

from PIL import Image, ImageOps

from ..options import DECODERS

__all__ = ["open_image", "decode_tensor", "RGBTransform", "Preset", "preprocess_record", "image_input"]


def open_image(path) -> Image.Image:
    """Decode an image file (the first frame of an animation), upright by its EXIF orientation.

    PIL refuses decompression bombs (more than twice ``Image.MAX_IMAGE_PIXELS``, 179 Mpx) when
    opening, before any pixel is decoded; the item is then a recorded skip like any other
    unreadable file.
    """
    with Image.open(path) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)  # a copy; also when there is nothing to rotate
    return upright


#: What torchvision's decoder takes over from PIL with ``--decoder torchvision``: single-frame JPEG, PNG and
#: WebP in 8-bit modes. Everything else (GIF, BMP, TIFF, 16-bit, CMYK) still goes through PIL.
_TV_FORMATS = {"JPEG", "PNG", "WEBP"}
_TV_MODES = {"RGB", "L", "RGBA", "LA", "P"}


def decode_tensor(path):
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


class RGBTransform:
    """Converts any PIL image to 8-bit RGB, then applies ``inner``.

    As torchvision's image loader does: grayscale is replicated to 3 channels, palette and CMYK
    images are converted, an alpha channel is dropped. 16- and 32-bit integer images (16-bit PNG,
    TIFF) are scaled to 8 bits by their type's range (PIL's own conversion would clip them white).
    """

    def __init__(self, inner: Callable):
        self.inner = inner

    def __call__(self, img):
        if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            import numpy as np

            arr = np.asarray(img)
            top = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
            img = Image.fromarray((np.clip(arr, 0, top).astype(np.float64) * (255 / top)).round().astype(np.uint8))
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.inner(img)


class Preset:
    """Resize the short side, centre-crop, scale to [0, 1], normalise: torchvision's classification eval
    preset, with the same public attributes (``crop_size``, ``resize_size``, ``mean``, ``std``,
    ``interpolation``, ``antialias``) and the same steps, built from ``torchvision.transforms.functional``.

    Takes a PIL image or a uint8 ``(C, H, W)`` tensor. A test checks it against the preset that
    torchvision's weights return, so a change on their side is noticed.
    """

    def __init__(self, *, crop_size: int, resize_size: int = 256, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), interpolation=None, antialias: bool | None = True):
        from torchvision.transforms import InterpolationMode

        self.crop_size = [int(crop_size)]
        self.resize_size = [int(resize_size)]
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.interpolation = InterpolationMode(interpolation) if interpolation is not None else InterpolationMode.BILINEAR
        self.antialias = antialias

    def __call__(self, img):
        import torch
        from torchvision.transforms import functional as F

        img = F.resize(img, self.resize_size, interpolation=self.interpolation, antialias=self.antialias)
        img = F.center_crop(img, self.crop_size)
        if not isinstance(img, torch.Tensor):
            img = F.pil_to_tensor(img)
        img = F.convert_image_dtype(img, torch.float)
        return F.normalize(img, mean=self.mean, std=self.std)

    def __repr__(self) -> str:
        return (f"Preset(crop_size={self.crop_size}, resize_size={self.resize_size}, mean={self.mean}, "
                f"std={self.std}, interpolation={self.interpolation})")


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
        "crop_mode": "center",
        "interpolation": preset.interpolation.value,
        "antialias": bool(preset.antialias),
        "mean": [float(v) for v in preset.mean],
        "std": [float(v) for v in preset.std],
        "channels": "RGB (grayscale/palette/alpha images converted to RGB)",
    }


def _tensor_decoder(decoder: str) -> Callable | None:
    """The ``path -> uint8 tensor | None`` function a decoder declares (``None``: PIL only)."""
    spec = DECODERS[decoder].tensor_decoder
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def image_input(key, transform: Callable, decoder: str = "pil", open_pil: Callable = open_image):
    """One image -> a backbone's input tensor (``transform`` is its ``Backbone.transform``), decoded as
    ``decoder`` says (a key of :data:`featx.options.DECODERS`; a tensor decoder needs ``key`` to be a
    file path); the PIL path opens ``key`` with ``open_pil`` (a source's own ``open``)."""
    decode = _tensor_decoder(decoder)
    if decode is not None:
        img = decode(key)
        if img is not None:  # None: a format or mode that goes through PIL
            return transform.inner(img)  # the weights' own preset, on the uint8 tensor
    return transform(open_pil(key))
